//! A throwaway `nats-server -js` with its own store directory.
//!
//! The first start lets the server pick a free port (`-p -1`, read back from its ports file);
//! restarts reuse that port so clients reconnect to the same address.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::dirs::ScratchDir;

/// A running nats-server; killed and deleted on drop.
#[derive(Debug)]
pub struct Nats {
    dir: ScratchDir,
    port: Option<u16>,
    websocket_port: Option<u16>,
    child: Option<Child>,
}

impl Nats {
    pub async fn start() -> anyhow::Result<Nats> {
        Self::start_with(None).await
    }

    /// Also opens nats-server's own WebSocket listener (plain, loopback) on a free port: the
    /// fan-out peer the benchmarks compare the gateway with.
    pub async fn start_with_websocket() -> anyhow::Result<Nats> {
        Self::start_with(Some(crate::free_port()?)).await
    }

    async fn start_with(websocket_port: Option<u16>) -> anyhow::Result<Nats> {
        let mut nats = Nats {
            dir: ScratchDir::new("nats")?,
            port: None,
            websocket_port,
            child: None,
        };
        nats.start_again().await?;
        Ok(nats)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// `ws://127.0.0.1:<port>` when started with [`Nats::start_with_websocket`].
    pub fn websocket_url(&self) -> Option<String> {
        self.websocket_port.map(|p| format!("ws://127.0.0.1:{p}"))
    }

    /// Starts the server (again), on the port it had before if any, and waits for it to listen.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("nats-server is already running");
        }
        let config = self.dir.path().join("nats.conf");
        let websocket = match self.websocket_port {
            Some(port) => format!("websocket {{ listen: \"127.0.0.1:{port}\", no_tls: true }}\n"),
            None => String::new(),
        };
        std::fs::write(&config, websocket)?;
        let port = self.port.map_or("-1".to_owned(), |p| p.to_string());
        let log = File::create(self.dir.path().join("nats.log"))?;
        let child = Command::new("setpriv")
            .args([
                "--pdeathsig",
                "SIGKILL",
                "--",
                "/usr/sbin/nats-server",
                "-js",
                "-c",
            ])
            .arg(&config)
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .args(["-a", "127.0.0.1", "-p", &port, "--ports_file_dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        let ports_file = self.ports_file(child.id());
        self.child = Some(child);
        let port = crate::wait_until(Duration::from_secs(10), "nats-server's ports file", || {
            let ports_file = ports_file.clone();
            async move { read_client_port(&ports_file) }
        })
        .await?;
        self.port = Some(port);
        crate::wait_until(
            Duration::from_secs(10),
            "nats-server to accept connections",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await?;
        Ok(())
    }

    /// Kills the server (SIGKILL): the harshest way NATS goes away.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn ports_file(&self, pid: u32) -> PathBuf {
        self.dir.path().join(format!("nats-server_{pid}.ports"))
    }
}

fn read_client_port(ports_file: &PathBuf) -> Option<u16> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
