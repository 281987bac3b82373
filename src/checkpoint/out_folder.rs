//! Guarding a run's output folder: lock it (see [`super::lock`]), and never replace what an
//! earlier run left there unless asked. Before, `--epochs 0` or `--limit-per-class 0` on a
//! finished run's folder silently replaced its trained model with an untrained one.

use super::lock::RunLock;
use super::training::RunFiles;
use anyhow::{bail, Context};
use std::path::Path;

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
    Ok(lock)
}

/// Remove what an earlier run left in `out` (its outputs and checkpoint; not the lock).
pub fn clear(out: &Path) -> anyhow::Result<()> {
    for f in RUN_OUTPUTS.iter().map(|f| out.join(f)).filter(|p| p.is_file()) {
        std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
    }
    let files = RunFiles::under(out);
    if files.dir.is_dir() {
        std::fs::remove_dir_all(&files.dir).with_context(|| format!("removing {}", files.dir.display()))?;
    }
    Ok(())
}
