//! Paths as people should read them in reports and notebooks: relative to the working
//! directory (never this machine's absolute checkout path).

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
}
