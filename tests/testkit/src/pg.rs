//! A throwaway PostgreSQL 15 cluster with `wal_level=logical`.
//!
//! `initdb` takes seconds, so it runs once per machine into a template cluster (guarded by a file
//! lock, keyed by [`TEMPLATE`]); each test copies the template and starts its copy on a free port
//! with its own socket directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::dirs::{ScratchDir, ROOT};

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// Bump when the template's configuration below changes.
const TEMPLATE: &str = "pg15-template-v3";
/// Database every test uses.
pub const DATABASE: &str = "datastream";
/// A login role authenticated with MD5 over TCP.
pub const MD5_USER: (&str, &str) = ("md5user", "md5-secret");
/// A login role authenticated with SCRAM-SHA-256 over TCP.
pub const SCRAM_USER: (&str, &str) = ("scramuser", "scram-secret");

const CONF: &str = "
listen_addresses = '127.0.0.1'
wal_level = logical
max_wal_senders = 16
max_replication_slots = 16
max_connections = 60
shared_buffers = 64MB
fsync = off
full_page_writes = off
timezone = 'America/Sao_Paulo'
track_commit_timestamp = on
log_min_messages = warning
";

const HBA: &str = "
local all all trust
host all md5user 127.0.0.1/32 md5
host all scramuser 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
";

/// A running cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: ScratchDir,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Copies the template cluster and starts it on a free port.
    pub async fn start() -> anyhow::Result<Postgres> {
        let template = ensure_template()?;
        let dir = ScratchDir::new("pg")?;
        copy_cluster(&template, &dir.path().join("data"))?;
        let mut pg = Postgres {
            port: crate::free_port()?,
            dir,
            child: None,
        };
        pg.start_again().await?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/datastream` (trust).
    pub fn url(&self) -> String {
        self.url_for("postgres", None)
    }

    /// A URL for `user`, with a password when given.
    pub fn url_for(&self, user: &str, password: Option<&str>) -> String {
        let auth = match password {
            Some(password) => format!("{user}:{password}"),
            None => user.to_owned(),
        };
        format!("postgres://{auth}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A connected client; its connection task runs on the current runtime.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to test PostgreSQL on port {}", self.port))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs SQL (several statements allowed) on a fresh connection.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.client().await?.batch_execute(sql).await?;
        Ok(())
    }

    /// Starts the cluster (again) on the same port and waits until it accepts connections.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("PostgreSQL on port {} is already running", self.port);
        }
        let data = self.dir.path().join("data");
        let log = File::create(self.dir.path().join("postgres.log"))?;
        let child = Command::new("setpriv")
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .args(["--pdeathsig", "SIGKILL", "--"])
            .arg(format!("{BIN}/postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let url = self.url();
        crate::wait_until(
            Duration::from_secs(30),
            "PostgreSQL to accept connections",
            || {
                let url = url.clone();
                async move {
                    tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .ok()
                        .map(|_| ())
                }
            },
        )
        .await
        .with_context(|| self.log_tail())
    }

    /// Fast shutdown (SIGINT): active sessions are disconnected, like a routine restart.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(nix::sys::signal::Signal::SIGINT)
    }

    /// Immediate shutdown (SIGQUIT): no checkpoint, crash recovery on the next start.
    pub fn crash(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(nix::sys::signal::Signal::SIGQUIT)
    }

    fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
            let _ = nix::sys::signal::kill(pid, signal);
            child.wait()?;
        }
        Ok(())
    }

    /// The end of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read(self.dir.path().join("postgres.log")).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(4000)..];
        format!("postgres log (tail):\n{}", String::from_utf8_lossy(tail))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

/// Creates the template cluster once per machine.
fn ensure_template() -> anyhow::Result<PathBuf> {
    let template = Path::new(ROOT).join(TEMPLATE);
    let ready = template.join(".ready");
    fs::create_dir_all(ROOT)?;
    let lock = File::create(Path::new(ROOT).join(format!("{TEMPLATE}.lock")))?;
    lock.lock()?;
    if ready.exists() {
        return Ok(template.join("data"));
    }
    let _ = fs::remove_dir_all(&template);
    fs::create_dir_all(&template)?;
    run(Command::new("chown")
        .arg("postgres:postgres")
        .arg(&template))?;
    let data = template.join("data");
    run(Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/initdb")])
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]))?;
    let mut conf = fs::read_to_string(data.join("postgresql.conf"))?;
    conf.push_str(CONF);
    fs::write(data.join("postgresql.conf"), conf)?;
    fs::write(data.join("pg_hba.conf"), HBA)?;
    // Start it once, without TCP, to create the database and roles.
    run(Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/pg_ctl"), "-w", "-D"])
        .arg(&data)
        .arg("-o")
        .arg(format!("-c listen_addresses='' -k {}", template.display()))
        .arg("-l")
        .arg(template.join("init.log"))
        .arg("start"))?;
    let setup = [
        format!("CREATE DATABASE {DATABASE}"),
        format!(
            "SET password_encryption = 'md5'; CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{}'",
            MD5_USER.0, MD5_USER.1
        ),
        format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{}'",
            SCRAM_USER.0, SCRAM_USER.1
        ),
    ];
    let mut psql = Command::new(format!("{BIN}/psql"));
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
        .arg(&template)
        .args(["-d", "postgres"]);
    for statement in &setup {
        psql.args(["-c", statement]);
    }
    let psql = run(&mut psql);
    run(Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &format!("{BIN}/pg_ctl"),
            "-w",
            "-m",
            "fast",
            "-D",
        ])
        .arg(&data)
        .arg("stop"))?;
    psql?;
    File::create(ready)?;
    Ok(data)
}

fn copy_cluster(template: &Path, to: &Path) -> anyhow::Result<()> {
    run(Command::new("cp").arg("-a").arg(template).arg(to))?;
    run(Command::new("chown")
        .arg("postgres:postgres")
        .arg(to.parent().context("cluster dir has a parent")?))
}

/// Runs a setup command to completion (the `runuser` ones run as `postgres`).
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
