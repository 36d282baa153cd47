//! `scripts/run`, the README's first command: it brings the whole system up (PostgreSQL and
//! nats-server on loopback, migrations, consumer, gateway, simulator), prints the page's address
//! and answers `/ready`, with rounds flowing end to end; Ctrl-C (SIGINT) stops every process it
//! started and the script exits 0. A second run reuses the data directory: the rounds of the
//! first run are still there and new ones follow.
//!
//! Ports and the data directory come from the script's `DATASTREAM_*` overrides, so nothing
//! collides with the machine's PostgreSQL (5432) or NATS (4222); `DATASTREAM_BIN_DIR` points at
//! the binaries the tests already use, so the script does not build. Skipped, saying so, only
//! where PostgreSQL 15 or nats-server is missing and cannot be installed (not root).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::os::unix::fs::MetadataExt;

use e2e::browser::{bin_dir, free_udp_port, repo_root};
use testkit::wait_until;
use tokio::io::{AsyncBufReadExt, BufReader};

const START_DEADLINE: Duration = Duration::from_secs(90);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

struct Ports {
    pg: u16,
    nats: u16,
    http: u16,
    wt: u16,
    metrics: u16,
}

#[tokio::test]
async fn scripts_run_starts_everything_and_stops_on_ctrl_c() {
    let installed = Path::new("/usr/lib/postgresql/15/bin/postgres").exists()
        && Path::new("/usr/sbin/nats-server").exists();
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !installed && !root {
        eprintln!(
            "SKIPPED: PostgreSQL 15 or nats-server is missing and cannot be installed without \
             root (scripts/prerequisites run)"
        );
        return;
    }
    let started = Instant::now();
    let dir = Path::new("/tmp").join(format!("datastream-run-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ports = Ports {
        pg: testkit::free_port().unwrap(),
        nats: testkit::free_port().unwrap(),
        http: testkit::free_port().unwrap(),
        wt: free_udp_port().unwrap(),
        metrics: testkit::free_port().unwrap(),
    };

    let first = run_once(&dir, &ports, None).await;
    let second = run_once(&dir, &ports, Some(first)).await;
    assert!(second > first);
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("two runs of scripts/run took {:?}", started.elapsed());
}

/// Starts the script, checks it, stops it with SIGINT; returns the newest round id it saw.
/// With `after`, the data of the previous run must still be there.
async fn run_once(dir: &Path, ports: &Ports, after: Option<i64>) -> i64 {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "SIGTERM", "--"])
        .arg(repo_root().join("scripts/run"))
        .args(["--", "--rate", "20"])
        .env("DATASTREAM_DIR", dir)
        .env("DATASTREAM_PG_PORT", ports.pg.to_string())
        .env("DATASTREAM_NATS_PORT", ports.nats.to_string())
        .env("DATASTREAM_HTTP_PORT", ports.http.to_string())
        .env("DATASTREAM_WT_PORT", ports.wt.to_string())
        .env("DATASTREAM_METRICS_PORT", ports.metrics.to_string())
        .env("DATASTREAM_BIN_DIR", bin_dir().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // The address line comes once everything is up (the gateway answered /ready).
    let page = format!("http://127.0.0.1:{}/", ports.http);
    let mut printed = Vec::new();
    tokio::time::timeout(START_DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("scripts/run: {line}");
            let found = line.contains("live page") && line.trim_end().ends_with(&page);
            printed.push(line);
            if found {
                return;
            }
        }
        panic!(
            "scripts/run ended without printing {page}:\n{}",
            printed.join("\n")
        );
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no page address within {START_DEADLINE:?}:\n{}",
            printed.join("\n")
        )
    });
    eprintln!("up in {:?}", t0.elapsed());
    // The rest of its output, so that the script never blocks on a full pipe.
    let drain = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ready = http.get(format!("{page}ready")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "/ready: {}",
        ready.text().await.unwrap()
    );
    let html = http.get(&page).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("<title>Datastream"), "the page: {html}");
    let games = http.get(format!("{page}api/games")).send().await.unwrap();
    let games: serde_json::Value = serde_json::from_slice(&games.bytes().await.unwrap()).unwrap();
    assert_eq!(games.as_array().map(Vec::len), Some(15), "{games}");

    let crash_latest = || async {
        let response = http
            .get(format!("{page}api/games/crash/latest"))
            .send()
            .await
            .ok()?;
        let round: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        round["round_id"].as_i64()
    };
    if let Some(previous) = after {
        // The stream and the database were kept: the previous run's last round is still there.
        let kept = crash_latest().await;
        assert!(
            kept >= Some(previous),
            "the data of the first run is gone: crash latest {kept:?}, was {previous}"
        );
    }
    // Rounds flow end to end (simulator → PostgreSQL → consumer → NATS → gateway), with ids
    // that go on from the previous run's.
    let newest = wait_until(Duration::from_secs(30), "a new crash round", || async {
        crash_latest().await.filter(|id| *id > after.unwrap_or(0))
    })
    .await
    .unwrap();

    // Ctrl-C: everything stops and the script exits 0.
    let t1 = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(STOP_DEADLINE, child.wait())
        .await
        .expect("scripts/run did not stop after SIGINT")
        .unwrap();
    let rest = drain.await.unwrap();
    assert!(status.success(), "exit {status}: {}", rest.join("\n"));
    assert!(
        rest.iter().any(|l| l.contains("stopped")),
        "no stop message: {rest:?}"
    );
    for (what, port) in [
        ("gateway", ports.http),
        ("PostgreSQL", ports.pg),
        ("nats-server", ports.nats),
        ("consumer metrics", ports.metrics),
    ] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "{what} still listens on {port} after Ctrl-C"
        );
    }
    let survivors = processes_mentioning(dir);
    assert!(survivors.is_empty(), "still running: {survivors:?}");
    eprintln!("stopped in {:?}", t1.elapsed());
    newest
}

/// Command lines of running processes that mention `dir` (PostgreSQL and nats-server name
/// their data directories).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}
