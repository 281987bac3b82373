//! The output folder's lock: `OUT/finetune.lock` holds the pid of the run writing there.
//! A second run on the same folder fails at once, naming that pid (before, both exited 0 and
//! one run's results were silently lost); a lock left by a process that no longer runs (a
//! kill, a power cut) is taken over with a warning. The lock is removed when dropped.

use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file's name inside an output folder.
pub const LOCK_FILE: &str = "finetune.lock";

/// A held lock on an output folder (released on drop).
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// Whether a process with this pid exists. Only Linux can tell cheaply (`/proc`); elsewhere a
/// lock is assumed held, and the error says which file to remove.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

impl RunLock {
    /// Lock `dir` (created if needed) for this process.
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        for _ in 0..3 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
                    f.sync_all().ok();
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if alive(pid) => bail!(
                            "{} is in use by another run (pid {pid}, lock file {}): wait for it, or pass another --out",
                            dir.display(),
                            path.display()
                        ),
                        Ok(pid) => eprintln!("warning: taking over the lock of {} from pid {pid}, which is no longer running", dir.display()),
                        // A lock being written this very moment reads empty: let its writer win.
                        Err(_) if text.is_empty() => {
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            if std::fs::read_to_string(&path).is_ok_and(|t| !t.trim().is_empty()) {
                                continue;
                            }
                            eprintln!("warning: taking over the empty lock file {}", path.display());
                        }
                        Err(_) => eprintln!("warning: taking over the unreadable lock file {}", path.display()),
                    }
                    // Remove it only if it is still the stale one: another run may have taken it over
                    // since it was read (this narrows that window; it does not close it).
                    if std::fs::read_to_string(&path).unwrap_or_default() != text {
                        continue;
                    }
                    std::fs::remove_file(&path).with_context(|| format!("removing the stale lock {}", path.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("creating the lock file {}", path.display())),
            }
        }
        bail!("could not lock {}: its lock file {} keeps changing", dir.display(), path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
