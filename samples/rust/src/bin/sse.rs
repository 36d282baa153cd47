//! Datastream over Server-Sent Events, in Rust (reqwest, reading the event stream by hand).
//!
//! ```sh
//! cargo run --manifest-path samples/rust/Cargo.toml --bin sse -- --host http://localhost:3000 --game double
//! ```
//!
//! Prints every round: the `initial` event with the latest, then each `message`. On a lost
//! connection it reconnects with `Last-Event-ID`, so it neither misses nor repeats a round.

use std::time::Duration;

use datastream_samples::{show, Options, Result};
use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let options = Options::from_args()?;
    let client = reqwest::Client::new();
    let (mut received, mut last_id, mut delay) = (0u64, None::<String>, Duration::from_millis(500));
    loop {
        let mut request = client
            .get(format!("{}/sse/{}", options.host, options.topic))
            .header("Accept", "text/event-stream");
        if let Some(key) = &options.api_key {
            request = request.header("X-API-Key", key); // or ?api_key= in the URL
        }
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        match request.send().await {
            Ok(response) if [401, 403, 404].contains(&response.status().as_u16()) => {
                return Err(format!("refused with HTTP {}", response.status()).into());
            }
            Ok(response) if response.status().is_success() => {
                delay = Duration::from_millis(500);
                let mut body = response.bytes_stream();
                let (mut buffer, mut event, mut data) =
                    (String::new(), String::new(), String::new());
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { break };
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    // One field per line; a blank line ends an event.
                    while let Some(end) = buffer.find('\n') {
                        let line = buffer[..end].trim_end_matches('\r').to_owned();
                        buffer.drain(..=end);
                        if line.is_empty() {
                            if event == "reset" {
                                last_id = None; // the cursor is outside the stream
                            } else if !data.is_empty()
                                && (event == "initial" || event == "message" || event.is_empty())
                            {
                                show(&data)?;
                                received += 1;
                                if options.count > 0 && received >= options.count {
                                    return Ok(());
                                }
                            }
                            event.clear();
                            data.clear();
                        } else if let Some(value) = line.strip_prefix("event:") {
                            event = value.trim_start().to_owned();
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data.push_str(value.strip_prefix(' ').unwrap_or(value));
                        } else if let Some(value) = line.strip_prefix("id:") {
                            let id = value.trim();
                            last_id = (!id.is_empty()).then(|| id.to_owned());
                        }
                    }
                }
                eprintln!("the stream ended; reconnecting");
            }
            Ok(response) => eprintln!("HTTP {}; retrying", response.status()),
            Err(err) => eprintln!("cannot connect ({err}); retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}
