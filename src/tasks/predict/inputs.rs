//! What `predict` is asked to classify, as image paths: files as given, folders searched
//! **recursively** for files with an image extension (so `predict test/` covers every class
//! folder), and glob patterns (`photos/*.jpg`, `data/**/*.png`; a folder matched is searched
//! like a folder given). Paths keep the input order, each folder's files sorted; a path named
//! twice is kept once.

use crate::data::image_folder::has_image_extension;
use anyhow::{bail, Context};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The image files under `dir`, recursively, sorted (hidden files and folders skipped).
/// Symbolic links to files are kept; links to folders are not followed (a link to a parent
/// folder looped forever), each with a note on stderr; links to nothing are listed, for the
/// reader to report as unreadable.
pub fn images_in_folder(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading folder {}", d.display()))? {
            let entry = entry.with_context(|| format!("reading folder {}", d.display()))?;
            let p = entry.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            let link = entry.file_type().with_context(|| format!("reading {}", p.display()))?.is_symlink();
            if p.is_dir() {
                if link {
                    eprintln!("note: not following {}, a link to a folder (name the folder itself to include it)", p.display());
                } else {
                    stack.push(p);
                }
            } else if p.is_file() {
                if has_image_extension(&p) {
                    out.push(p);
                }
            } else if link && has_image_extension(&p) {
                // A link to nothing stays in the list, so predict reports it with the skipped.
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn folder(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = images_in_folder(dir)?;
    if files.is_empty() {
        bail!("folder {} has no image files (looked recursively for .jpg, .jpeg, .png, .webp, .bmp, ...)", dir.display());
    }
    Ok(files)
}

/// Expand `inputs` (files, folders, glob patterns) into image paths; see the module doc.
/// A missing path, a pattern matching nothing and a folder without images are errors naming them.
pub fn expand_inputs(inputs: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let p = Path::new(input);
        if p.is_dir() {
            out.extend(folder(p)?);
        } else if p.is_file() {
            out.push(p.to_path_buf());
        } else if input.contains(['*', '?', '[']) {
            let mut matched = 0;
            for m in glob::glob(input).with_context(|| format!("bad glob pattern {input:?}"))? {
                let m = m.with_context(|| format!("reading a match of {input:?}"))?;
                if m.is_dir() {
                    out.extend(images_in_folder(&m)?);
                } else {
                    out.push(m);
                }
                matched += 1;
            }
            if matched == 0 {
                bail!("the pattern {input:?} matches no files");
            }
        } else {
            bail!("no such file or folder: {input}");
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}
