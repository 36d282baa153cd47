//! Datastream over WebSocket, in Rust (tokio-tungstenite).
//!
//! ```sh
//! cargo run --manifest-path samples/rust/Cargo.toml --bin ws -- --host http://localhost:3000 --game crash
//! ```
//!
//! Prints every round. On a lost connection it reconnects with `?since=<last seq>`, so it
//! neither misses nor repeats a round.

use std::time::Duration;

use datastream_samples::{fetch_token, show, Options, Result};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let options = Options::from_args()?;
    let base = options.host.replacen("http", "ws", 1);
    let (mut received, mut since, mut delay) = (0u64, None::<u64>, Duration::from_millis(500));
    loop {
        let cursor = since.map(|s| format!("?since={s}")).unwrap_or_default();
        let mut request = format!("{base}/ws/{}{cursor}", options.topic).into_client_request()?;
        if let Some(key) = &options.api_key {
            // The token travels as the WebSocket sub-protocol; the gateway echoes it.
            let token = fetch_token(&options, key).await?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", token.parse()?);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut ws, _)) => {
                delay = Duration::from_millis(500);
                while let Some(message) = ws.next().await {
                    match message {
                        Ok(Message::Text(text)) => {
                            since = Some(show(&text)?);
                            received += 1;
                            if options.count > 0 && received >= options.count {
                                return Ok(());
                            }
                        }
                        Ok(Message::Close(Some(frame))) => {
                            if u16::from(frame.code) == 4010 {
                                since = None; // the cursor is outside the stream: start afresh
                            }
                            eprintln!("closed {} {}; reconnecting", frame.code, frame.reason);
                        }
                        Ok(_) => {}
                        Err(err) => {
                            eprintln!("connection lost ({err}); reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(WsError::Http(response))
                if [401, 403, 404].contains(&response.status().as_u16()) =>
            {
                return Err(format!("refused with HTTP {}", response.status()).into());
            }
            Err(err) => eprintln!("cannot connect ({err}); retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}
