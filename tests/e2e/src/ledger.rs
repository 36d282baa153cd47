//! Clients that keep a ledger: they record every round they receive and, whatever happens to
//! the gateway (restart, kill, NATS away), reconnect and resume from the last `seq` they saw, as
//! a careful production client would. The chaos test compares their ledgers with the stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::Value;
use testkit::wait_until;

use crate::clients::{parse_sse_block, SseItem, WsClient, WsEvent};
use crate::pipeline::Stored;
use crate::wt::{CertHash, WtClient};

/// How long a WebTransport ledger client's stream may stay quiet before the client checks that
/// the gateway process it is connected to still runs.
const WT_QUIET: Duration = Duration::from_secs(2);

/// One recorded round: its stream sequence and id.
pub type Entry = (u64, i64);

/// What a ledger client saw, and how often it had to reconnect.
#[derive(Debug, Default)]
pub struct Ledger {
    pub entries: Vec<Entry>,
    pub connections: u32,
}

/// A recording client running in the background until dropped.
pub struct LedgerClient {
    pub name: String,
    ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

impl LedgerClient {
    /// A WebSocket client of `path` (e.g. `/ws/crash`) on the gateway at `addr`.
    pub fn websocket(addr: SocketAddr, path: &str) -> LedgerClient {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (record, path) = (Arc::clone(&ledger), path.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let cursor = last_seq(&record);
                let url = match cursor {
                    Some(seq) => format!("{path}?since={seq}"),
                    None => path.clone(),
                };
                if let Ok(mut ws) = WsClient::connect(addr, &url).await {
                    record.lock().connections += 1;
                    while let Ok(WsEvent::Round(round)) = ws.next(Duration::from_secs(3600)).await {
                        push(&record, &round);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        LedgerClient {
            name: format!("WebSocket client of {addr}"),
            ledger,
            task,
        }
    }

    /// An SSE client of `path` (e.g. `/sse/crash`) on the gateway at `addr`, resuming with
    /// `Last-Event-ID` as a browser's EventSource does.
    pub fn sse(addr: SocketAddr, path: &str) -> LedgerClient {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (record, url) = (Arc::clone(&ledger), format!("http://{addr}{path}"));
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default();
            loop {
                let mut request = http.get(&url).header("accept", "text/event-stream");
                if let Some(seq) = last_seq(&record) {
                    request = request.header("last-event-id", seq.to_string());
                }
                if let Ok(response) = request.send().await {
                    if response.status().is_success() {
                        record.lock().connections += 1;
                        read_sse(response, &record).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        LedgerClient {
            name: format!("SSE client of {addr}"),
            ledger,
            task,
        }
    }

    /// A WebTransport client of `path` (e.g. `/wt/crash`) of the gateway whose HTTP side is at
    /// `addr`, reading the session's stream (newline-delimited JSON) and resuming with
    /// `?since=`. Before every connection it fetches `/api/wt/cert-hash`, as a page does: a
    /// restarted gateway has a new self-signed certificate (and says which UDP port it serves).
    ///
    /// A gateway that was killed cannot close its sessions, and QUIC would only notice after
    /// its idle timeout (30 s). So when the stream is quiet for a moment the client fetches the
    /// hash again: a different certificate means the process behind the session is gone, and
    /// the client reconnects at once.
    pub fn webtransport(addr: SocketAddr, path: &str) -> LedgerClient {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (record, path) = (Arc::clone(&ledger), path.to_owned());
        let task = tokio::spawn(async move {
            loop {
                if let Ok(cert) = CertHash::fetch_at(addr).await {
                    let url = match last_seq(&record) {
                        Some(seq) => format!("{path}?since={seq}"),
                        None => path.clone(),
                    };
                    if let Ok(Ok(mut session)) = WtClient::open(cert.port, &url, &cert.bytes).await
                    {
                        record.lock().connections += 1;
                        read_wt(&mut session, addr, &cert, &record).await;
                        session.close();
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        LedgerClient {
            name: format!("WebTransport client of {addr}"),
            ledger,
            task,
        }
    }

    /// A copy of the ledger so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.ledger.lock().entries.clone()
    }

    pub fn connections(&self) -> u32 {
        self.ledger.lock().connections
    }

    /// The last sequence recorded.
    pub fn last_seq(&self) -> Option<u64> {
        last_seq(&self.ledger)
    }

    /// Waits (up to `deadline`) until the client has recorded the last of `stored` (the whole
    /// stream, all of the client's topic), then checks that its ledger is exactly the stream
    /// from the client's first round on: nothing lost, nothing twice, stream order. Returns the
    /// number of rounds recorded.
    pub async fn check_against(
        &self,
        stored: &[Stored],
        deadline: Duration,
    ) -> anyhow::Result<usize> {
        let last = stored.last().context("the stream is empty")?.seq;
        wait_until(
            deadline,
            &format!("{} to reach seq {last}", self.name),
            || async { (self.last_seq() == Some(last)).then_some(()) },
        )
        .await?;
        let ledger = self.entries();
        let first = ledger.first().context("nothing recorded")?.0;
        let expected: Vec<Entry> = stored
            .iter()
            .filter(|s| s.seq >= first)
            .map(|s| (s.seq, s.round.round_id))
            .collect();
        anyhow::ensure!(
            ledger.len() == expected.len(),
            "{}: {} rounds recorded, {} expected",
            self.name,
            ledger.len(),
            expected.len()
        );
        anyhow::ensure!(
            ledger == expected,
            "{}: lost, duplicated or reordered rounds",
            self.name
        );
        Ok(ledger.len())
    }
}

impl Drop for LedgerClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn last_seq(ledger: &Mutex<Ledger>) -> Option<u64> {
    ledger.lock().entries.last().map(|(seq, _)| *seq)
}

fn push(ledger: &Mutex<Ledger>, round: &Value) {
    if let (Some(seq), Some(id)) = (round["seq"].as_u64(), round["round_id"].as_i64()) {
        ledger.lock().entries.push((seq, id));
    }
}

async fn read_sse(response: reqwest::Response, ledger: &Mutex<Ledger>) {
    let mut body = response.bytes_stream();
    let mut buf = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(SseItem::Event { event, data, .. }) = parse_sse_block(&block) {
                if event == "initial" || event == "message" {
                    if let Ok(round) = serde_json::from_str::<Value>(&data) {
                        push(ledger, &round);
                    }
                }
            }
        }
    }
}

/// Records the session's stream lines until it ends, fails, or turns out to belong to a
/// gateway process that is gone.
async fn read_wt(
    session: &mut WtClient,
    addr: SocketAddr,
    cert: &CertHash,
    ledger: &Mutex<Ledger>,
) {
    loop {
        match tokio::time::timeout(WT_QUIET, session.line(Duration::from_secs(3600))).await {
            Ok(Ok(Some(line))) => {
                if let Ok(round) = serde_json::from_str::<Value>(&line) {
                    push(ledger, &round);
                }
                // The same rounds come as datagrams too; this client keeps the stream's.
                let _ = session.datagrams();
            }
            Ok(Ok(None) | Err(_)) => return,
            Err(_quiet) => {
                if let Ok(now) = CertHash::fetch_at(addr).await {
                    if now.bytes != cert.bytes {
                        return;
                    }
                }
            }
        }
    }
}
