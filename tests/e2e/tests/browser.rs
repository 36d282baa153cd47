//! The live page in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/page.mjs`), against the whole pipeline (PostgreSQL, cdc-consumer, NATS, two
//! gateways, the simulator at 20 rounds/s).
//!
//! The page connects over WebSocket and shows new results for at least 3 games, is switched to
//! SSE and then to WebTransport (datagrams and the stream, with the certificate hash from
//! `/api/wt/cert-hash`), rides out a gateway restart, and is photographed into
//! `target/artifacts/`. On a gateway with `AUTH=required` it asks for a key on 401, refuses a
//! wrong one and works with the right one over all three protocols. Every round the page
//! received is then checked against the NATS stream: per game type, exactly the stream's events
//! between the first and the last it got, each once, whatever the switches and the restart.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::browser::{repo_root, target_dir, which, Demo, Edge};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";
const DEADLINE: Duration = Duration::from_secs(150);

#[tokio::test]
async fn live_page_in_chromium() {
    let started = Instant::now();
    let root = repo_root();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/prerequisites test (installs Debian's chromium)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "tests/browser/node_modules is missing: run scripts/prerequisites test (npm ci)"
    );
    let node = which("node").expect("node is not on PATH");

    let demo = Demo::start(20).await.unwrap();
    let nats = demo.pipeline.nats.url();
    let (mut open, auth) =
        tokio::try_join!(Edge::start(&nats, false), Edge::start(&nats, true)).unwrap();
    let key = demo.create_key("browser-test").await.unwrap();
    auth.wait_for_key(&key).await.unwrap();
    let artifacts = target_dir().unwrap().join("artifacts");
    eprintln!("pipeline up in {:?}", started.elapsed());

    let mut child = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "SIGKILL", "--"])
        .arg(node)
        .arg(root.join("tests/browser/page.mjs"))
        .arg("--url")
        .arg(open.url("/"))
        .arg("--out")
        .arg(&artifacts)
        .arg("--auth-url")
        .arg(auth.url("/"))
        .arg("--api-key")
        .arg(&key)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut result = None;
    let mut restarted = false;
    while let Some(line) = tokio::time::timeout_at(until, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("page.mjs did not finish within {DEADLINE:?}"))
        .unwrap()
    {
        if line == "PHASE restart-gateway" {
            open.restart().await.unwrap();
            restarted = true;
            stdin.write_all(b"restarted\n").await.unwrap();
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<Value>(json).unwrap());
        }
    }
    let status = child.wait().await.unwrap();
    let result = result.expect("page.mjs printed no RESULT line");
    for message in result["console"].as_array().into_iter().flatten() {
        eprintln!("browser console: {}", message.as_str().unwrap_or_default());
    }
    assert!(
        status.success() && result["ok"] == true,
        "page.mjs failed: {}\n{}\n{}",
        result["error"].as_str().unwrap_or("(no error)"),
        open.log_tail(),
        auth.log_tail()
    );
    assert!(restarted, "the gateway-restart phase did not run");
    for phase in result["phases"].as_array().unwrap() {
        eprintln!("phase: {phase}");
    }

    // What the page showed while connected over each protocol.
    let phases = result["phases"].as_array().unwrap();
    let first = &phases[0];
    assert!(
        first["gamesUpdated"].as_u64().unwrap() >= 3,
        "fewer than 3 games updated: {first}"
    );
    let live = &result["live"];
    for protocol in ["websocket", "sse", "webtransport"] {
        assert!(
            live["byProtocol"][protocol].as_u64().unwrap() >= 5,
            "few rounds over {protocol}: {}",
            live["byProtocol"]
        );
    }
    assert!(
        live["wt"]["datagrams"].as_u64().unwrap() > 0 && live["wt"]["stream"].as_u64().unwrap() > 0,
        "WebTransport rounds must arrive as datagrams and on the stream: {}",
        live["wt"]
    );
    assert!(live["reconnects"].as_u64().unwrap() > 0);
    for counter in ["duplicates", "shownTwice", "resets"] {
        assert_eq!(live[counter], 0, "{counter}: {live}");
    }
    assert!(live["gamesWithResults"].as_u64().unwrap() >= 3);

    // Nothing missed or repeated across the switches and the restart: per type, the page got
    // exactly the stream's events from its first to its last.
    let stream = demo.stream_seqs_by_type().await.unwrap();
    for (label, seqs) in [("live", &live["seqs"]), ("auth", &result["auth"]["seqs"])] {
        let seqs = seqs.as_object().unwrap();
        assert!(seqs.len() >= 5, "{label}: subscriptions {:?}", seqs.keys());
        for (game_type, got) in seqs {
            let got: Vec<u64> = got
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap())
                .collect();
            assert!(!got.is_empty(), "{label}: no {game_type} rounds");
            let unique: BTreeSet<u64> = got.iter().copied().collect();
            assert_eq!(
                unique.len(),
                got.len(),
                "{label} {game_type}: a round twice"
            );
            let (lo, hi) = (*unique.first().unwrap(), *unique.last().unwrap());
            let expected: Vec<u64> = stream[game_type]
                .iter()
                .copied()
                .filter(|s| (lo..=hi).contains(s))
                .collect();
            let got: Vec<u64> = unique.into_iter().collect();
            assert_eq!(got, expected, "{label} {game_type}: missed rounds");
        }
    }
    assert_eq!(result["auth"]["duplicates"], 0);
    assert_eq!(result["auth"]["shownTwice"], 0);

    for shot in ["page.png", "page-phone.png", "page-auth.png"] {
        let size = std::fs::metadata(artifacts.join(shot)).unwrap().len();
        assert!(size > 20_000, "{shot} is only {size} bytes");
    }
    eprintln!(
        "latency (ms): {}\nscreenshots in {}; whole test {:?}",
        live["latency"],
        artifacts.display(),
        started.elapsed()
    );
}
