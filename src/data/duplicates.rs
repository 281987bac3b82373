//! The same photo twice, found by the SHA-256 of its file: filed under two classes (its label
//! is ambiguous), or on both the training side and the validation or test side (a leak: the
//! model is scored on a photo it trained on). A run reports them and trains on the data as
//! given: the data set is the user's, and d2l's published split keeps its numbers comparable.

use super::ImageFolder;
use std::collections::HashMap;
use std::path::PathBuf;

/// One copy of a photo (a file): where it is, its class, and the part of the data set it is in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Photo {
    pub part: String,
    pub class: String,
    pub path: PathBuf,
}

/// What [`find`] reports; each entry is a pair of copies of one file content.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Duplicates {
    /// The same photo under two classes (within a part or across parts).
    pub across_classes: Vec<(Photo, Photo)>,
    /// The same photo in `train` and in a held-out part (validation or test), whatever its classes.
    pub leaks: Vec<(Photo, Photo)>,
}

impl Duplicates {
    pub fn is_empty(&self) -> bool {
        self.across_classes.is_empty() && self.leaks.is_empty()
    }

    /// One line per pair, the paths relative to the working directory where they can be.
    pub fn lines(&self) -> Vec<String> {
        let shown = |c: &Photo| format!("{} ({} '{}')", crate::util::paths::shown(&c.path), c.part, c.class);
        let mut out = Vec::new();
        for (a, b) in &self.across_classes {
            out.push(format!("the same photo in two classes: {} and {}", shown(a), shown(b)));
        }
        for (a, b) in &self.leaks {
            out.push(format!("a held-out photo is also a training photo: {} is {}", shown(b), shown(a)));
        }
        out
    }

    /// `"1 photo in two classes, 1 held-out photo also in train"` (the kinds found; `"none"`).
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        let n = |k: usize, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
        let mut parts = Vec::new();
        if !self.across_classes.is_empty() {
            parts.push(format!("{} in two classes", n(self.across_classes.len(), "photo", "photos")));
        }
        if !self.leaks.is_empty() {
            parts.push(format!("{} also in train", n(self.leaks.len(), "held-out photo", "held-out photos")));
        }
        parts.join(", ")
    }
}

/// Identical files among the named parts of a data set (`("train", &train)`, ...): every pair
/// of copies under different classes, and every pair with one copy in `train` and the other in
/// another part. Pairs are listed in the parts' order, then file order.
pub fn find(parts: &[(&str, &ImageFolder)]) -> Duplicates {
    let mut seen: HashMap<[u8; 32], Vec<Photo>> = HashMap::new();
    let mut order: Vec<[u8; 32]> = Vec::new();
    for (part, ds) in parts {
        for i in 0..ds.len() {
            let copy = Photo { part: part.to_string(), class: ds.classes[ds.labels[i] as usize].clone(), path: ds.paths[i].clone() };
            let entry = seen.entry(ds.digests[i]).or_default();
            if entry.is_empty() {
                order.push(ds.digests[i]);
            }
            entry.push(copy);
        }
    }
    let mut report = Duplicates::default();
    for digest in order {
        let copies = &seen[&digest];
        for (i, a) in copies.iter().enumerate() {
            for b in &copies[i + 1..] {
                if a.class != b.class {
                    report.across_classes.push((a.clone(), b.clone()));
                }
                match (a.part == "train", b.part == "train") {
                    (true, false) => report.leaks.push((a.clone(), b.clone())),
                    (false, true) => report.leaks.push((b.clone(), a.clone())),
                    _ => {}
                }
            }
        }
    }
    report
}
