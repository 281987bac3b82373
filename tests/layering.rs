//! The crate's layers import downwards only, and no module imports its way back to itself.
//!
//! [`ORDER`] is the one home of the layer table: every top-level module of `src/` must be in it
//! (a new one fails until it is placed), and each may use only modules earlier in it. lib.rs's
//! list and README's layout describe it; this test is what holds it. Read from every file's
//! `crate::` and `super::`/`self::` paths, brace groups included (`use crate::{data, ops}`),
//! and the crate root's re-exports (`crate::fine_tune` is `experiment`); comments excluded. Inside
//! a folder module the files must not import each other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. Leaf helpers, then the layers, then the commands' library side.
const ORDER: &[&str] = &[
    // leaf helpers
    "util",
    // the layers
    "transforms", "data", "ops", "models", "checkpoint", "train", "plot",
    // the commands' library side (tasks/: evaluation, zero_shot, bench, experiment, predict,
    // notebook), and serve on top of it
    "tasks", "serve",
];

/// Circles allowed inside a folder module: none (the convolution family's two went with its
/// folder). The test fails when a circle not listed here appears, and when a listed one is gone.
const KNOWN_CIRCLES: &[&str] = &[];

type Module = Vec<String>;

/// Every library source file and the module path it defines (`src/ops/mod.rs` is `ops`).
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<Module, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path != src.join("bin") {
                    walk(&path, src, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut m: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
                if m.last().is_some_and(|l| l == "mod" || l == "lib") {
                    m.pop();
                }
                out.insert(m, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The paths a line names after `crate::`, `super::` (any number) or `self::`, brace groups
/// expanded, each resolved against the file's module `at`.
fn referenced(code: &str, at: &Module) -> Vec<Module> {
    // Paths are ASCII; with every other character made one byte, any index is a char boundary.
    let code: String = code.chars().map(|c| if c.is_ascii() { c } else { '?' }).collect();
    let code = code.as_str();
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let mut i = 0;
    while i < code.len() {
        // A path starts at `crate`, `super` or `self` not preceded by an identifier character.
        let starts = ["crate::", "super::", "self::"].iter().any(|p| code[i..].starts_with(*p));
        if !starts || (i > 0 && is_ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let (mut base, mut j) = (at.clone(), i);
        if code[j..].starts_with("crate::") {
            base.clear();
            j += 7;
        } else if code[j..].starts_with("self::") {
            j += 6;
        } else {
            while code[j..].starts_with("super::") {
                base.pop();
                j += 7;
            }
        }
        let (paths, end) = parse_tree(code, j);
        for p in paths {
            out.push([base.clone(), p].concat());
        }
        i = end.max(i + 1);
    }
    out
}

/// `a::b::{c, d::e}` from `at`: the paths it names (without the prefix) and where it ends.
fn parse_tree(code: &str, mut j: usize) -> (Vec<Module>, usize) {
    let bytes = code.as_bytes();
    let ident = |j: usize| code[j..].bytes().take_while(|c| c.is_ascii_alphanumeric() || *c == b'_').count();
    let mut prefix: Module = Vec::new();
    loop {
        let n = ident(j);
        if n > 0 {
            prefix.push(code[j..j + n].to_string());
            j += n;
            if code[j..].starts_with("::") {
                j += 2;
                continue;
            }
            return (vec![prefix], j);
        }
        if j < code.len() && bytes[j] == b'{' {
            let mut all = Vec::new();
            j += 1;
            loop {
                while j < code.len() && (bytes[j] == b' ' || bytes[j] == b',') {
                    j += 1;
                }
                if j >= code.len() || bytes[j] == b'}' {
                    return (all.into_iter().map(|p: Module| [prefix.clone(), p].concat()).collect(), j + 1);
                }
                let (inner, end) = parse_tree(code, j);
                all.extend(inner);
                // Skip `as name` and anything else up to the next item.
                j = end;
                while j < code.len() && bytes[j] != b',' && bytes[j] != b'}' {
                    j += 1;
                }
            }
        }
        // `*` or the end of the path.
        return (vec![prefix], j);
    }
}

/// The longest prefix of `path` that is a module file.
fn resolve(path: &Module, files: &BTreeMap<Module, PathBuf>) -> Module {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| files.contains_key(p)).unwrap_or_default()
}

/// The crate root's `pub use module::{item, ...}`: item -> module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lib.lines().map(str::trim).filter(|l| l.starts_with("pub use ")) {
        let rest = line.trim_start_matches("pub use ").trim_end_matches(';');
        // `a::b::{c, d}` or `a::b::c`: the items after the last `::` come from the top module `a`.
        let (path, items) = match rest.find("::{") {
            Some(i) => (&rest[..i], &rest[i + 3..]),
            None => rest.rsplit_once("::").unwrap_or(("", rest)),
        };
        let module = path.split("::").next().unwrap_or_default();
        for item in items.trim_end_matches('}').split(',').map(str::trim).filter(|i| !i.is_empty() && !module.is_empty()) {
            out.insert(item.to_string(), module.to_string());
        }
    }
    out
}

/// Every module -> the modules its file names (resolved to files, itself excluded).
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let files = modules(src);
    let reexports = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut out = BTreeMap::new();
    for (m, path) in &files {
        let mut uses = BTreeSet::new();
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for mut p in referenced(code, m) {
                if p.len() == 1 {
                    if let Some(module) = reexports.get(&p[0]) {
                        p = vec![module.clone()];
                    }
                }
                let target = resolve(&p, &files);
                if !target.is_empty() && &target != m {
                    uses.insert(target);
                }
            }
        }
        out.insert(m.clone(), uses);
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rank(top: &str) -> Option<usize> {
    ORDER.iter().position(|l| *l == top)
}

/// Upward imports: a module naming one of a layer above it (or not in [`ORDER`]).
fn against_the_layers(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (m, uses) in g {
        let Some(top) = m.first() else { continue };
        let Some(r) = rank(top) else {
            wrong.push(format!("src/{top} is not in ORDER: place it in the layer table"));
            continue;
        };
        for u in uses.iter().filter(|u| u[0] != *top) {
            if rank(&u[0]).map_or(true, |ru| ru >= r) {
                wrong.push(format!("{} uses {} (a layer above it)", m.join("::"), u.join("::")));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    wrong
}

/// Circles among the files of one folder module (`a -> b -> a`), each written from its
/// smallest member.
fn circles(g: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    // Sibling edges only: a file and the files beside it (its parent's mod.rs re-exports are
    // the parent, not a sibling).
    let siblings = |m: &Module| -> Vec<Module> { g[m].iter().filter(|u| u.len() == m.len() && u[..u.len() - 1] == m[..m.len() - 1]).cloned().collect() };
    fn walk(at: &Module, path: &mut Vec<Module>, siblings: &dyn Fn(&Module) -> Vec<Module>, found: &mut BTreeSet<String>) {
        for next in siblings(at) {
            if let Some(i) = path.iter().position(|p| *p == next) {
                let cycle = &path[i..];
                let min = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap();
                let mut names: Vec<String> = cycle[min..].iter().chain(&cycle[..min]).map(|m| m.join("::")).collect();
                names.push(names[0].clone());
                found.insert(names.join(" -> "));
            } else if path.len() < 8 {
                path.push(next.clone());
                walk(&next, path, siblings, found);
                path.pop();
            }
        }
    }
    for m in g.keys().filter(|m| !m.is_empty()) {
        walk(m, &mut vec![m.clone()], &siblings, &mut found);
    }
    found
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let g = graph(&src());
    let tops: BTreeSet<&str> = g.keys().filter_map(|m| m.first().map(String::as_str)).collect();
    assert!(tops.len() >= ORDER.len() - 1, "read only {tops:?}: is the parser broken?");
    let wrong = against_the_layers(&g);
    assert!(wrong.is_empty(), "imports against the layering (tests/layering.rs ORDER):\n{}", wrong.join("\n"));
}

#[test]
fn no_folder_module_imports_in_a_circle() {
    let found = circles(&graph(&src()));
    let known: BTreeSet<String> = KNOWN_CIRCLES.iter().map(|s| s.to_string()).collect();
    let new: Vec<&String> = found.difference(&known).collect();
    assert!(new.is_empty(), "files importing each other in a circle: {new:?}");
    let gone: Vec<&String> = known.difference(&found).collect();
    assert!(gone.is_empty(), "gone (delete them from KNOWN_CIRCLES): {gone:?}");
}

/// The parser on what the sources write: brace groups, `super::super::`, `self::`, re-exports.
#[test]
fn the_reader_finds_every_form_of_path() {
    let at: Module = vec!["ops".into(), "winograd".into()];
    let names = |code: &str, at: &Module| -> Vec<String> { referenced(code, at).iter().map(|m| m.join("::")).collect() };
    assert_eq!(names("use crate::{data::Loader, ops::{gemm, im2col as i}};", &at), ["data::Loader", "ops::gemm", "ops::im2col"]);
    assert_eq!(names("use super::im2col::{for_each_item, gemm_par};", &at), ["ops::im2col::for_each_item", "ops::im2col::gemm_par"]);
    assert_eq!(names("let n = super::super::paths::shown(p);", &vec!["train".into(), "fit".into(), "x".into()]), ["train::paths::shown"]);
    assert_eq!(names("pub use self::gemm::Precision;", &vec!["ops".into()]), ["ops::gemm::Precision"]);
    assert_eq!(names("x.into_supercrate::y; my_crate::z", &at), Vec::<String>::new());
    let r = root_reexports("pub use tasks::experiment::{fine_tune, Experiment};\npub use util::device::device_label;\npub use anyhow;");
    assert_eq!((r["fine_tune"].as_str(), r["Experiment"].as_str(), r["device_label"].as_str()), ("tasks", "tasks", "util"));
    assert!(!r.contains_key("anyhow"));
}

/// A planted upward import and a planted circle are caught: the checks can fail.
#[test]
fn a_planted_upward_import_and_a_planted_circle_are_caught() {
    let mut g = graph(&src());
    g.get_mut(&vec!["ops".to_string(), "gemm".to_string()]).unwrap().insert(vec!["train".into()]);
    assert_eq!(against_the_layers(&g), ["ops::gemm uses train (a layer above it)"]);
    let (a, b): (Module, Module) = (vec!["data".into(), "decode".into()], vec!["data".into(), "image_folder".into()]);
    assert!(g.contains_key(&a) && g.contains_key(&b));
    g.get_mut(&a).unwrap().insert(b.clone());
    g.get_mut(&b).unwrap().insert(a.clone());
    assert!(circles(&g).contains("data::decode -> data::image_folder -> data::decode"), "{:?}", circles(&g));
}
