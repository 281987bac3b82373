//! Guarding a run's output folder: lock it (see [`super::lock`]), and never replace what an
//! earlier run left there unless asked. Before, `--epochs 0` or `--limit-per-class 0` on a
//! finished run's folder silently replaced its trained model with an untrained one; and an
//! `--overwrite` run that then failed (diverged in epoch 1) left only its own checkpoint, the
//! run it replaced gone: now the old outputs wait in `OUT/.replaced/` until the new run ends.

use super::atomic::{remove_leftovers_of, sync_dir};
use super::lock::RunLock;
use super::training::RunFiles;
use anyhow::{bail, Context};
use std::path::Path;

/// Where `--overwrite` keeps the run it replaces until the new one has finished.
pub const REPLACED: &str = ".replaced";

/// The outputs a training run writes in its folder.
pub const RUN_OUTPUTS: [&str; 7] = ["model.safetensors", "history.json", "curves.png", "curves.svg", "metrics.json", "confusion.png", "top-losses.png"];

/// Lock `out` for this run and check it: a folder holding a finished run (`model.safetensors`
/// or `history.json`) or an interrupted one (a checkpoint) is refused unless `resume` (continue
/// it) or `overwrite` (then call [`clear`] once the new run's data and model have loaded, so a
/// bad data folder does not cost the old run). The lock is held until the returned value is
/// dropped.
pub fn prepare(out: &Path, resume: bool, overwrite: bool) -> anyhow::Result<RunLock> {
    if resume && overwrite {
        bail!("--resume continues the run in {} and --overwrite replaces it: pass one of them", out.display());
    }
    let lock = RunLock::acquire(out)?;
    // Temporary files of a run killed while writing its final outputs (the lock is ours now).
    remove_leftovers_of(out, &RUN_OUTPUTS);
    let files = RunFiles::under(out);
    let found: Vec<&str> = RUN_OUTPUTS.iter().copied().filter(|f| out.join(f).is_file()).collect();
    let checkpoint = files.state().is_file();
    if !overwrite && !resume && (checkpoint || found.iter().any(|f| *f == "model.safetensors" || *f == "history.json")) {
        let what = if found.contains(&"model.safetensors") { "a finished run" } else { "an interrupted run" };
        bail!(
            "{} holds {what} ({}): pass --resume to continue it, --overwrite to replace it, or another --out",
            out.display(),
            if checkpoint { [found.as_slice(), &["checkpoint/"]].concat().join(", ") } else { found.join(", ") }
        );
    }
    if out.join(REPLACED).is_dir() {
        eprintln!(
            "note: {} holds the outputs an interrupted --overwrite run set aside (the run before it); they stay there until a run in this folder finishes",
            crate::util::paths::shown(&out.join(REPLACED))
        );
    }
    Ok(lock)
}

/// The outputs of the run an `--overwrite` replaces, moved aside into `OUT/.replaced/` (see
/// [`set_aside`]) until the new run either finishes ([`Replaced::discard`]) or fails
/// ([`Replaced::restore`]).
#[derive(Debug)]
pub struct Replaced {
    out: std::path::PathBuf,
}

/// The run outputs and the checkpoint folder present in `dir`, by name.
fn outputs_in(dir: &Path) -> Vec<&'static str> {
    RUN_OUTPUTS.iter().copied().filter(|f| dir.join(f).is_file()).chain(dir.join("checkpoint").is_dir().then_some("checkpoint")).collect()
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

/// Move what an earlier run left in `out` (its outputs and checkpoint; not the lock) into
/// `OUT/.replaced/`, where it waits for the new run's end. Where `.replaced/` is already there
/// (an earlier `--overwrite` was killed), it holds the last finished run and is kept: what
/// `out` holds then is that killed run's, and is removed.
pub fn set_aside(out: &Path) -> anyhow::Result<Replaced> {
    let aside = out.join(REPLACED);
    if aside.is_dir() {
        remove_outputs(out)?;
    } else {
        let tmp = out.join(".replacing");
        // A kill in the middle of an earlier set-aside: its files are the old run's.
        if tmp.is_dir() {
            for name in outputs_in(&tmp) {
                if !out.join(name).exists() {
                    rename(&tmp.join(name), &out.join(name))?;
                }
            }
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for name in outputs_in(out) {
            rename(&out.join(name), &tmp.join(name))?;
        }
        // One rename makes the set-aside whole.
        rename(&tmp, &aside)?;
        sync_dir(out);
    }
    Ok(Replaced { out: out.to_path_buf() })
}

/// Remove a run's outputs and checkpoint from `dir`.
fn remove_outputs(dir: &Path) -> anyhow::Result<()> {
    for name in outputs_in(dir) {
        let p = dir.join(name);
        if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

impl Replaced {
    /// The new run finished: the old outputs go.
    pub fn discard(self) -> anyhow::Result<()> {
        let aside = self.out.join(REPLACED);
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))
    }

    /// The new run failed: its outputs go and the old ones come back, as they were.
    pub fn restore(self) -> anyhow::Result<()> {
        let aside = self.out.join(REPLACED);
        remove_outputs(&self.out)?;
        for name in outputs_in(&aside) {
            rename(&aside.join(name), &self.out.join(name))?;
        }
        sync_dir(&self.out);
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))
    }
}
