//! Harness for the tests that run Datastream's user-facing pieces from outside Rust: the live
//! page in Chromium (`tests/browser`), the client samples (`samples/`) and `scripts/run`.
//!
//! A [`Demo`] is what a user has after `scripts/run`, on throwaway infrastructure: PostgreSQL and
//! nats-server from testkit, a streaming `cdc-consumer`, and the simulator playing rounds at a
//! fixed rate. [`Edge`] is a gateway process that can be restarted on the same HTTP and UDP
//! ports (a browser reconnects to the same address). [`run_with_deadline`] runs an outside
//! program (python3, node, cargo) and kills it when its time is up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use testkit::{wait_until, Service};

use crate::pipeline::Pipeline;

/// `TOKEN_SECRET` of the gateways these tests start with `AUTH=required`.
pub const TOKEN_SECRET: &str = "user-facing-tests-token-secret-of-32-bytes";

/// The repository's root (the workspace's root).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// The directory the tests take Datastream's binaries from (`testkit::bin_path`): the release
/// build in scripts/check, else the running profile's (`target/debug`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let gateway = testkit::bin_path("edge-gateway")?;
    Ok(gateway
        .parent()
        .context("edge-gateway has no directory")?
        .to_path_buf())
}

/// The workspace's target directory (`target`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    Ok(bin_dir()?
        .parent()
        .context("the binaries' directory has no parent")?
        .to_path_buf())
}

/// `program` found on `PATH`, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A UDP port that was free a moment ago (for `WT_ADDR`).
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `cmd` to completion with its output captured, killing it after `deadline`.
pub async fn run_with_deadline(
    mut cmd: tokio::process::Command,
    deadline: Duration,
) -> anyhow::Result<Output> {
    let shown = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(output) => Ok(output?),
        Err(_) => bail!("{shown} did not finish within {deadline:?}"),
    }
}

/// The whole data path with rounds flowing: PostgreSQL, NATS, a streaming consumer and the
/// simulator in load mode.
pub struct Demo {
    pub pipeline: Pipeline,
    pub consumer: Service,
    pub simulator: Service,
}

impl Demo {
    /// Starts everything; the simulator inserts `rate` finished rounds per second, round-robin
    /// over the 15 seeded games.
    pub async fn start(rate: u32) -> anyhow::Result<Demo> {
        let pipeline = Pipeline::start().await?;
        let consumer = pipeline.start_streaming_consumer(&[]).await?;
        let simulator = Service::start(
            "simulator",
            &["--rate", &rate.to_string()],
            &[("DATABASE_URL", pipeline.pg.url())],
        )?;
        Ok(Demo {
            pipeline,
            consumer,
            simulator,
        })
    }

    /// Creates an API key with `cdc-consumer keys create` and returns it.
    pub async fn create_key(&self, name: &str) -> anyhow::Result<String> {
        let mut cli = Service::start(
            "cdc-consumer",
            &["keys", "create", "--name", name],
            &self.pipeline.consumer_env(&[]),
        )?;
        let status = cli.wait_exit(Duration::from_secs(30)).await?;
        let out = cli.log();
        if !status.success() {
            bail!("cdc-consumer keys create failed: {out}");
        }
        out.lines()
            .find_map(|line| line.strip_prefix("key "))
            .map(|key| key.trim().to_owned())
            .with_context(|| format!("no key in the output of keys create: {out}"))
    }

    /// Every stream sequence per game type, in stream order.
    pub async fn stream_seqs_by_type(&self) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
        let mut by_type: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for stored in self.pipeline.stream_rounds().await? {
            by_type
                .entry(stored.round.game_type.clone())
                .or_default()
                .push(stored.seq);
        }
        Ok(by_type)
    }
}

/// A gateway process on fixed loopback ports.
pub struct Edge {
    service: Service,
    pub http: SocketAddr,
    pub wt_port: u16,
    env: Vec<(&'static str, String)>,
    client: reqwest::Client,
}

impl Edge {
    /// Starts a gateway reading `nats_url`, with `AUTH=required` when `auth`, and waits until
    /// it is ready.
    pub async fn start(nats_url: &str, auth: bool) -> anyhow::Result<Edge> {
        let http: SocketAddr = format!("127.0.0.1:{}", testkit::free_port()?).parse()?;
        let wt_port = free_udp_port()?;
        let mut env = vec![
            ("HTTP_ADDR", http.to_string()),
            ("WT_ADDR", format!("127.0.0.1:{wt_port}")),
            ("NATS_URL", nats_url.to_owned()),
            ("HTTP_WORKERS", "2".to_owned()),
            ("SHUTDOWN_GRACE", "2s".to_owned()),
        ];
        if auth {
            env.push(("AUTH", "required".to_owned()));
            env.push(("TOKEN_SECRET", TOKEN_SECRET.to_owned()));
        } else {
            env.push(("AUTH", "off".to_owned()));
        }
        let edge = Edge {
            service: Service::start("edge-gateway", &[], &env)?,
            http,
            wt_port,
            env,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        edge.wait_ready().await?;
        Ok(edge)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(30), "the gateway's /ready", || async {
            let response = self.client.get(self.url("/ready")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await
        .with_context(|| self.service.log_tail())
    }

    /// Stops the gateway (SIGTERM, as Kubernetes does) and starts it again on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.service.terminate()?;
        self.service.wait_exit(Duration::from_secs(15)).await?;
        self.service = Service::start("edge-gateway", &[], &self.env)?;
        self.wait_ready().await
    }

    /// Waits until the gateway issues tokens for `key` (keys reach it through the pipeline).
    pub async fn wait_for_key(&self, key: &str) -> anyhow::Result<()> {
        wait_until(
            Duration::from_secs(30),
            "the gateway to know the API key",
            || async {
                let response = self
                    .client
                    .post(self.url("/api/auth/token"))
                    .header("X-API-Key", key)
                    .send()
                    .await
                    .ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await
    }

    pub fn log_tail(&self) -> String {
        self.service.log_tail()
    }
}
