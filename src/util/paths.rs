//! Paths (and numbers) as people should read them in reports, errors and notebooks: paths
//! relative to the working directory (never this machine's absolute checkout path), numbers
//! short.

use std::path::Path;

/// `path` relative to the working directory when that can be said (`../shared/data/x`), else
/// as given.
pub fn shown(path: &Path) -> String {
    let rel = std::env::current_dir().ok().and_then(|cwd| {
        let abs = if path.is_absolute() { path.to_path_buf() } else { cwd.join(path) };
        pathdiff::diff_paths(normalize(&abs), normalize(&cwd))
    });
    match rel {
        Some(r) if r.as_os_str().is_empty() => ".".into(),
        Some(r) => r.display().to_string(),
        None => path.display().to_string(),
    }
}

/// `x` as a person would write it: plain decimals from 1e-4 to 1e6 (`0.2`, `0.0001`),
/// scientific notation outside (`5e-5`; `1e-300`, not 300 digits).
pub fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// Drop `.` and fold `a/..` without touching the file system (symbolic links are not followed).
fn normalize(p: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_shown_relative_to_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(shown(&cwd.join("runs/x")), "runs/x");
        assert_eq!(shown(&cwd.join("notebooks/../runs/x")), "runs/x");
        assert_eq!(shown(&cwd), ".");
        assert_eq!(shown(Path::new("data/train")), "data/train");
        let parent = cwd.parent().unwrap().join("shared/data");
        assert_eq!(shown(&parent), "../shared/data");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(0.2), "0.2");
        assert_eq!(number(5e-5), "5e-5");
        assert_eq!(number(1e-4), "0.0001");
        assert_eq!(number(1e-300), "1e-300");
        assert_eq!(number(-2.5e7), "-2.5e7");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
