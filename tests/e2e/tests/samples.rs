//! The client samples (`samples/`) against a real pipeline with `AUTH=required`, each with the
//! API key option, run the way the README shows them: Python (websockets; requests +
//! sseclient-py), Node.js (ws; eventsource) and Rust (tokio-tungstenite; reqwest), over
//! WebSocket and SSE. Each must print `--count` rounds of its topic, and every printed round must
//! be the stream's event with that `seq`, in order.
//!
//! Dependencies are installed as a user would: a venv under `target/tmp` for Python, `npm ci`
//! from the committed lockfile for Node.js, `cargo build --locked` for Rust (into the workspace's
//! target directory, so dependencies shared with the workspace are reused). A language whose
//! toolchain is missing is skipped, and the test says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::browser::{repo_root, run_with_deadline, target_dir, which, Demo, Edge};
use tokio::process::Command;

const COUNT: usize = 3;
const RUN_DEADLINE: Duration = Duration::from_secs(45);
const INSTALL_DEADLINE: Duration = Duration::from_secs(300);

/// One sample run: what to start and which topic it follows.
struct Run {
    label: String,
    cmd: Command,
    /// `--game` slug or `--type` type the sample was given.
    topic: Topic,
}

#[derive(Clone, Copy, Debug)]
enum Topic {
    Game(&'static str),
    Type(&'static str),
}

impl Topic {
    fn args(self) -> [&'static str; 2] {
        match self {
            Topic::Game(slug) => ["--game", slug],
            Topic::Type(t) => ["--type", t],
        }
    }
}

#[tokio::test]
async fn samples_print_rounds_with_an_api_key() {
    let started = Instant::now();
    let root = repo_root();
    let demo = Demo::start(20).await.unwrap();
    let edge = Edge::start(&demo.pipeline.nats.url(), true).await.unwrap();
    let key = demo.create_key("samples-test").await.unwrap();
    edge.wait_for_key(&key).await.unwrap();
    let host = edge.url("");

    let (python, node, rust) = tokio::join!(python(&root), node(&root), rust(&root));
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    let topics = [
        ("ws", Topic::Game("crash")),
        ("sse", Topic::Type("multiplier")),
    ];
    for (language, launcher) in [("python", python), ("node", node), ("rust", rust)] {
        let launcher = match launcher {
            Ok(launcher) => launcher,
            Err(Skip(why)) => {
                eprintln!("SKIPPED {language} samples: {why}");
                skipped.push(language);
                continue;
            }
        };
        for (protocol, topic) in topics {
            let mut cmd = launcher(protocol);
            cmd.arg("--host")
                .arg(&host)
                .args(topic.args())
                .args(["--api-key", &key, "--count", &COUNT.to_string()])
                .current_dir(&root);
            runs.push(Run {
                label: format!("{language} {protocol}"),
                cmd,
                topic,
            });
        }
    }
    eprintln!("samples ready after {:?}", started.elapsed());

    let outputs = futures_util::future::join_all(runs.into_iter().map(|run| async move {
        let output = run_with_deadline(run.cmd, RUN_DEADLINE).await;
        (run.label, run.topic, output)
    }))
    .await;

    let stream: BTreeMap<u64, (i64, String, String)> = demo
        .pipeline
        .stream_rounds()
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.seq,
                (s.round.round_id, s.round.game_slug, s.round.game_type),
            )
        })
        .collect();
    for (label, topic, output) in &outputs {
        let output = output
            .as_ref()
            .unwrap_or_else(|err| panic!("{label}: {err:#}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{label} failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        let rounds: Vec<(String, i64, u64)> = stdout.lines().filter_map(parse_line).collect();
        assert_eq!(rounds.len(), COUNT, "{label} printed:\n{stdout}\n{stderr}");
        let mut last = 0;
        for (slug, round_id, seq) in &rounds {
            assert!(*seq > last, "{label}: seq {seq} after {last}");
            last = *seq;
            let (id, stored_slug, stored_type) = stream
                .get(seq)
                .unwrap_or_else(|| panic!("{label}: seq {seq} is not in the stream"));
            assert_eq!((id, stored_slug), (round_id, slug), "{label}: seq {seq}");
            match topic {
                Topic::Game(want) => assert_eq!(slug, want, "{label}"),
                Topic::Type(want) => assert_eq!(stored_type, want, "{label}"),
            }
        }
        eprintln!(
            "{label}: {} rounds, e.g. {}",
            rounds.len(),
            stdout.lines().next().unwrap_or("")
        );
    }
    assert!(
        skipped.len() < 3,
        "no language could run its samples: {skipped:?}"
    );
    eprintln!("samples test took {:?}", started.elapsed());
}

/// `[crash] round 512  seq 90211  ...` → (slug, round id, seq).
fn parse_line(line: &str) -> Option<(String, i64, u64)> {
    let rest = line.strip_prefix('[')?;
    let (slug, rest) = rest.split_once("] round ")?;
    let mut words = rest.split_whitespace();
    let round_id = words.next()?.parse().ok()?;
    (words.next()? == "seq").then_some(())?;
    let seq = words.next()?.parse().ok()?;
    Some((slug.to_owned(), round_id, seq))
}

/// Why a language is skipped.
struct Skip(String);

type Launcher = Box<dyn Fn(&str) -> Command + Send>;

/// A venv with the pinned requirements (reused while requirements.txt is unchanged).
async fn python(root: &Path) -> Result<Launcher, Skip> {
    let python = which("python3").ok_or_else(|| Skip("python3 is not on PATH".into()))?;
    let venv = target_dir().unwrap().join("tmp/samples-venv");
    let requirements = root.join("samples/python/requirements.txt");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        let mut create = Command::new(&python);
        create.arg("-m").arg("venv").arg(&venv);
        let out = run_with_deadline(create, INSTALL_DEADLINE).await.unwrap();
        if !out.status.success() {
            return Err(Skip(format!(
                "python3 cannot make a venv: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut install = Command::new(venv.join("bin/pip"));
        install
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements);
        succeed("pip install", install).await;
        std::fs::write(&stamp, wanted).unwrap();
    }
    let interpreter = venv.join("bin/python");
    let dir = root.join("samples/python");
    Ok(Box::new(move |protocol| {
        let mut cmd = Command::new(&interpreter);
        cmd.arg(dir.join(format!("{protocol}.py")));
        cmd
    }))
}

/// `npm ci` from the committed lockfile (reused while the lockfile is unchanged).
async fn node(root: &Path) -> Result<Launcher, Skip> {
    let node = which("node").ok_or_else(|| Skip("node is not on PATH".into()))?;
    let npm = which("npm").ok_or_else(|| Skip("npm is not on PATH".into()))?;
    let dir = root.join("samples/node");
    let lock = std::fs::read_to_string(dir.join("package-lock.json")).unwrap();
    let stamp = dir.join("node_modules/.installed-from-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        let mut install = Command::new(npm);
        install
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir);
        succeed("npm ci", install).await;
        std::fs::write(&stamp, lock).unwrap();
    }
    Ok(Box::new(move |protocol| {
        let mut cmd = Command::new(&node);
        cmd.arg(dir.join(format!("{protocol}.mjs")));
        cmd
    }))
}

/// `cargo build --locked` of the Rust samples into the workspace's target directory.
async fn rust(root: &Path) -> Result<Launcher, Skip> {
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| which("cargo"))
        .ok_or_else(|| Skip("cargo is not on PATH".into()))?;
    let target = target_dir().unwrap();
    let mut build = Command::new(cargo);
    build
        .args(["build", "--locked", "--bins", "--manifest-path"])
        .arg(root.join("samples/rust/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target);
    succeed("cargo build (samples/rust)", build).await;
    let bins = target.join("debug");
    Ok(Box::new(move |protocol| Command::new(bins.join(protocol))))
}

async fn succeed(what: &str, cmd: Command) {
    let out = run_with_deadline(cmd, INSTALL_DEADLINE)
        .await
        .unwrap_or_else(|err| panic!("{what}: {err:#}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
