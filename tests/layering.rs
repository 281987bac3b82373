//! The crate's layers import downwards only: transforms, data, ops, models, checkpoint, train,
//! plot (then the top-level modules and the CLI). Ops never know models, models never know
//! weight files or training. Read from the sources' `crate::` paths (doc comments excluded).

use std::collections::BTreeSet;
use std::path::Path;

/// Each layer and the crate modules it may use; `paths`, `imagenet` and `device` are leaf helpers.
const LAYERS: [(&str, &[&str]); 7] = [
    ("transforms", &[]),
    ("data", &["transforms", "paths"]),
    ("ops", &[]),
    ("models", &["ops", "transforms", "imagenet"]),
    ("checkpoint", &["models", "transforms", "paths", "imagenet"]),
    ("train", &["checkpoint", "models", "ops", "data", "transforms", "paths"]),
    ("plot", &["train", "data", "transforms"]),
];

fn used_modules(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            used_modules(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for (i, _) in code.match_indices("crate::") {
                    let module: String = code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    out.insert(module);
                }
            }
        }
    }
}

#[test]
fn layers_import_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (layer, allowed) in LAYERS {
        let mut used = BTreeSet::new();
        used_modules(&src.join(layer), &mut used);
        for m in used {
            if m != layer && !allowed.contains(&m.as_str()) {
                wrong.push(format!("src/{layer} uses crate::{m}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}
