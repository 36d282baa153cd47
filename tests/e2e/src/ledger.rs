//! Clients that keep a ledger: they record every round they receive and, whatever happens to
//! the gateway (restart, kill, NATS away), reconnect and resume from the last `seq` they saw, as
//! a careful production client would. The chaos test compares their ledgers with the stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::Value;

use crate::clients::{parse_sse_block, SseItem, WsClient, WsEvent};

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
