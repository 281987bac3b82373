//! Nothing committed may carry a path of the machine it was made on: a checkout's absolute
//! path, a temporary folder or a home folder (in code, docs, logs or notebook outputs). Such a
//! path means nothing on a reader's machine, and in notebook outputs it shows that the
//! printed paths were not made relative to the project.

mod support;

use std::process::Command;

/// Absolute-path beginnings that only ever name one machine's files.
const MACHINE_PREFIXES: [&str; 6] = ["/work/", "/tmp/", "/root/", "/home/", "/Users/", "C:\\Users\\"];

#[test]
fn no_committed_file_holds_a_machine_path() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(root).output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        support::available("a git checkout (and git)", false, "git clone the project");
        return;
    };
    let this_file = "tests/no_machine_paths.rs";
    let mut found = Vec::new();
    let mut checked = 0;
    for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name == this_file {
            continue;
        }
        let Ok(bytes) = std::fs::read(std::path::Path::new(root).join(&name)) else { continue };
        // Binary files (fixtures, pictures, fonts) cannot hold a readable path.
        if bytes.contains(&0) {
            continue;
        }
        checked += 1;
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            for prefix in MACHINE_PREFIXES {
                if let Some(at) = line.find(prefix) {
                    let shown: String = line[at..].chars().take(80).collect();
                    found.push(format!("{name}:{}: {shown}", i + 1));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} text files were checked: is this the whole checkout?");
    assert!(found.is_empty(), "machine paths in committed files (make them relative to the project):\n{}", found.join("\n"));
}
