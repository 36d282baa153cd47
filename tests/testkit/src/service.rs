//! Datastream's own binaries as child processes, with their logs captured to a file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::dirs::ScratchDir;

/// Where the tests take Datastream's binaries from when it is set: scripts/check points it at the
/// release build, the binaries the image ships (`scripts/run` reads the same variable).
pub const BIN_DIR: &str = "DATASTREAM_BIN_DIR";

/// Path of workspace binary `name`: in [`BIN_DIR`] when that is set, else of the running
/// program's own build ([`own_build_bin_path`]).
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let Some(dir) = std::env::var_os(BIN_DIR) else {
        return own_build_bin_path(name);
    };
    let path = Path::new(&dir).join(name);
    anyhow::ensure!(
        path.exists(),
        "{name} is not in {BIN_DIR}={} (scripts/build-release builds it there)",
        path.display()
    );
    Ok(path)
}

/// Path of a workspace binary of the same build profile as the running program, whatever
/// [`BIN_DIR`] says: a test runs from `target/<profile>/deps/`, a harness binary from
/// `target/<profile>/`. The consumer with fail points exists only in the test build (cargo
/// builds it for the consumer's integration tests); build the others first when
/// [`BIN_DIR`] is not set (`cargo build --workspace --bins`).
pub fn own_build_bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("the running program has no directory")?;
    let candidates = [Some(dir), dir.parent().filter(|_| dir.ends_with("deps"))];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|path| path.exists());
    found.with_context(|| {
        format!(
            "{name} is not built next to {}: build the binaries first (cargo build --workspace --bins)",
            exe.display()
        )
    })
}

/// A running Datastream process; killed on drop.
#[derive(Debug)]
pub struct Service {
    name: String,
    dir: ScratchDir,
    child: Option<Child>,
    exit: Option<ExitStatus>,
}

impl Service {
    /// Starts workspace binary `name` ([`bin_path`]) with `args` and `env` (added to this
    /// process's environment, minus `RUST_LOG` unless given). Output goes to a log file readable
    /// with [`Service::log`].
    pub fn start(name: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Service> {
        Service::start_binary(&bin_path(name)?, name, args, env)
    }

    /// [`Service::start`] with the test build's own binary ([`own_build_bin_path`]).
    pub fn start_own_build(
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        Service::start_binary(&own_build_bin_path(name)?, name, args, env)
    }

    fn start_binary(
        path: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        let dir = ScratchDir::new(name)?;
        let log = File::create(dir.path().join("out.log"))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "SIGKILL", "--"])
            .arg(path)
            .args(args)
            .env_remove("RUST_LOG")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Service {
            name: name.to_owned(),
            dir,
            child: Some(child),
            exit: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: a crash at an arbitrary instant.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            self.exit = Some(child.wait()?);
        }
        Ok(())
    }

    /// SIGTERM: the orderly stop Kubernetes asks for.
    pub fn terminate(&self) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGTERM)?;
        }
        Ok(())
    }

    /// Waits for the process to exit by itself, up to `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit {
                return Ok(status);
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    self.exit = Some(status);
                    continue;
                }
            }
            if start.elapsed() > deadline {
                bail!(
                    "{} did not exit within {deadline:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// For a process that must refuse to start: waits for it to exit with status 2 (a bad
    /// setting) having printed exactly one line, and returns that line.
    pub async fn refusal_line(&mut self, deadline: Duration) -> anyhow::Result<String> {
        let status = self.wait_exit(deadline).await?;
        let log = self.log();
        anyhow::ensure!(
            status.code() == Some(2),
            "{} exited with {status:?}, not 2: {log}",
            self.name
        );
        let lines: Vec<&str> = log.trim().lines().collect();
        anyhow::ensure!(
            lines.len() == 1,
            "{} printed {} lines: {log}",
            self.name,
            lines.len()
        );
        Ok(lines[0].to_owned())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.exit = Some(status);
                self.child = None;
                false
            }
            _ => false,
        }
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("{} log (tail):\n{tail}", self.name)
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, deadline: Duration) -> anyhow::Result<()> {
        crate::wait_until(
            deadline,
            &format!("{} to log {needle:?}", self.name),
            || async { self.log().contains(needle).then_some(()) },
        )
        .await
        .with_context(|| self.log_tail())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
