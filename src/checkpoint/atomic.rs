//! Crash-safe file writes: every file a run leaves (JSON, safetensors) is written to a temporary
//! file beside its target, flushed to disk (`fsync`), renamed over the target, and the folder
//! synced, so a reader (or a resume after a kill) sees the old file or the new one, never half
//! of one. Also the fault-injection hook the checkpoint tests use to kill a run mid-write.

use anyhow::Context;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Environment variable of the testing hook [`fault_point`]: `STEP` or `STEP@N` aborts the
/// process the N-th time (default 1st) it reaches the write step named `STEP`.
pub const FAULT_ENV: &str = "TRANSFER_WORKBOOK_FAULT";

/// A testing hook (always compiled, the tests run in `--release`): when [`FAULT_ENV`] names
/// `step` (optionally `@N` for its N-th occurrence), abort the process right here, as a kill or
/// a power cut would, without unwinding or running destructors. Unset, it costs one env lookup.
pub fn fault_point(step: &str) {
    static HITS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
    let Ok(spec) = std::env::var(FAULT_ENV) else { return };
    let (name, nth) = match spec.split_once('@') {
        Some((n, k)) => (n, k.parse::<usize>().unwrap_or(1)),
        None => (spec.as_str(), 1),
    };
    if name != step {
        return;
    }
    let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
    let count = hits.get_or_insert_with(HashMap::new).entry(step.to_string()).or_insert(0);
    *count += 1;
    if *count == nth {
        eprintln!("{FAULT_ENV}: aborting at write step '{step}' (occurrence {nth})");
        std::process::abort();
    }
}

/// The temporary file used while writing `path`: hidden, beside it, named by our pid.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write `bytes` to `path` atomically: temp file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    // Fault point `rename:NAME`: the file flushed under its temporary name, not renamed.
    if std::env::var(FAULT_ENV).is_ok_and(|v| v.starts_with("rename:")) {
        fault_point(&format!("rename:{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(&dir);
    Ok(())
}

/// Serialise `value` as pretty JSON to `path` with [`write_atomic`].
pub fn write_json_atomic<S: Serialize>(path: &Path, value: &S) -> anyhow::Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// Make a rename in `dir` durable (a no-op where folders cannot be opened, e.g. Windows).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Remove the temporary files that interrupted writes of the files `names` left in `dir`
/// (`.NAME.tmp-PID`), leaving everything else (a folder that is not only ours) alone.
pub fn remove_leftovers_of(dir: &Path, names: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = names.iter().any(|n| name.strip_prefix(&format!(".{n}.tmp-")).is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())));
        if ours {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Remove the temporary files interrupted writes left in `dir` (`.NAME.tmp-PID`, and the
/// `NAME.tmp` of earlier versions).
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if (name.starts_with('.') && name.contains(".tmp-")) || name.ends_with(".safetensors.tmp") || name.ends_with(".json.tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
