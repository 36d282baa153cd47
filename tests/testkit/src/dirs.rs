//! Scratch directories under `/tmp/datastream-testkit`, named after the process that owns them so
//! that a later run can remove what a killed run left.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

pub(crate) const ROOT: &str = "/tmp/datastream-testkit";

/// A new empty directory `ROOT/<kind>-<pid>-<n>`, removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new(kind: &str) -> anyhow::Result<ScratchDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        static SWEEP: Once = Once::new();
        std::fs::create_dir_all(ROOT)?;
        SWEEP.call_once(sweep_orphans);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(ROOT).join(format!("{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes directories whose owning process is gone.
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').nth(1)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
