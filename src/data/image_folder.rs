//! torchvision `ImageFolder` semantics: `root/<class>/<image>`, classes are the sorted
//! sub-folder names. Images are decoded once (in parallel) and kept in memory. A file that
//! cannot be decoded is skipped with a warning and counted, never a crash.

use anyhow::{bail, Context};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// A file left out of the dataset, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub images: Vec<Arc<RgbImage>>,
    pub labels: Vec<u32>,
    pub paths: Vec<PathBuf>,
    /// SHA-256 of each image file's bytes (for [`super::duplicates`]).
    pub digests: Vec<[u8; 32]>,
    pub skipped: Vec<Skipped>,
}

/// Whether `p` ends in one of the image extensions the data loader and `predict` read.
pub fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sorted class sub-folders of `root`; a clear error when there are none.
pub fn class_folders(root: &Path) -> anyhow::Result<Vec<String>> {
    if !root.is_dir() {
        bail!("data folder {} does not exist (expected {}/<class>/<image files>)", root.display(), root.display());
    }
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') {
                classes.push(name);
            }
        }
    }
    classes.sort();
    if classes.is_empty() {
        bail!("{} has no class sub-folders (expected {}/<class>/<image files>)", root.display(), root.display());
    }
    Ok(classes)
}

impl ImageFolder {
    /// Load `root/<class>/*`, classes found from the folder names.
    pub fn load(root: impl AsRef<Path>) -> anyhow::Result<Self> {
        let root = root.as_ref();
        let classes = class_folders(root)?;
        Self::load_classes(root, &classes)
    }

    /// Load with a given class list (a test split must use the training split's classes).
    pub fn load_classes(root: impl AsRef<Path>, classes: &[String]) -> anyhow::Result<Self> {
        Self::load_limited(root, classes, None)
    }

    /// [`ImageFolder::load_classes`] keeping only the first `limit` files of each class (file
    /// order), chosen before anything is decoded: a quick run on a large folder reads only
    /// what it uses.
    pub fn load_limited(root: impl AsRef<Path>, classes: &[String], limit: Option<usize>) -> anyhow::Result<Self> {
        let root = root.as_ref().to_path_buf();
        let found = class_folders(&root)?;
        if found != classes {
            bail!("{} has classes {:?}, expected {:?} (as in the training data)", root.display(), found, classes);
        }
        let mut files: Vec<(PathBuf, u32)> = Vec::new();
        let mut skipped = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading class folder {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            let before = files.len();
            for p in entries {
                if limit.is_some_and(|n| files.len() - before >= n) {
                    break;
                }
                if has_image_extension(&p) {
                    files.push((p, label as u32));
                } else {
                    skipped.push(Skipped { path: p, reason: "not an image file".into() });
                }
            }
            if files.len() == before {
                bail!("class folder {} has no image files", dir.display());
            }
        }

        let bar = ProgressBar::new(files.len() as u64).with_message(format!("decoding {}", root.display()));
        bar.set_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        let decoded: Vec<Result<(RgbImage, [u8; 32]), String>> = files
            .par_iter()
            .map(|(p, _)| {
                // Truncated JPEGs are refused here (the decoder alone would return grey).
                let r = std::fs::read(p).map_err(|e| format!("cannot read it: {e}")).and_then(|bytes| {
                    let img = super::decode::decode_bytes(&bytes, super::decode::DecodeLimits::default()).map_err(|e| e.to_string())?;
                    Ok((img, <sha2::Sha256 as sha2::Digest>::digest(&bytes).into()))
                });
                bar.inc(1);
                r
            })
            .collect();
        bar.finish_and_clear();

        let mut ds = Self { root, classes: classes.to_vec(), images: vec![], labels: vec![], paths: vec![], digests: vec![], skipped };
        for ((path, label), img) in files.into_iter().zip(decoded) {
            match img {
                Ok((img, digest)) => {
                    ds.images.push(Arc::new(img));
                    ds.labels.push(label);
                    ds.paths.push(path);
                    ds.digests.push(digest);
                }
                Err(e) => {
                    eprintln!("warning: skipping {}: {e}", path.display());
                    ds.skipped.push(Skipped { path, reason: e });
                }
            }
        }
        for (label, class) in ds.classes.iter().enumerate() {
            if !ds.labels.contains(&(label as u32)) {
                bail!("class folder {} has no readable images", ds.root.join(class).display());
            }
        }
        Ok(ds)
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Images per class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// One line: images per class and what was skipped.
    pub fn summary(&self) -> String {
        let counts: Vec<String> = self.classes.iter().zip(self.class_counts()).map(|(c, n)| format!("{c} {n}")).collect();
        let mut s = format!("{}: {} images ({})", crate::util::paths::shown(&self.root), self.len(), counts.join(", "));
        if !self.skipped.is_empty() {
            let n = self.skipped.len();
            s.push_str(&format!(", {n} {} skipped", if n == 1 { "file" } else { "files" }));
        }
        s
    }

    /// A subset by indices (for quick runs and splits).
    pub fn subset(&self, indices: &[usize]) -> Self {
        Self {
            root: self.root.clone(),
            classes: self.classes.clone(),
            images: indices.iter().map(|&i| self.images[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            paths: indices.iter().map(|&i| self.paths[i].clone()).collect(),
            digests: indices.iter().map(|&i| self.digests[i]).collect(),
            skipped: vec![],
        }
    }

    /// At most `n` images of each class, the first ones in file order.
    pub fn take_per_class(&self, n: usize) -> Self {
        let mut seen = vec![0usize; self.classes.len()];
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let l = self.labels[i] as usize;
                seen[l] += 1;
                seen[l] <= n
            })
            .collect();
        self.subset(&idx)
    }

    /// A stratified random split (d2l exercise: train/validation/test from one folder).
    /// Each class is shuffled with `seed` and cut by `fractions` (which must sum to 1); the
    /// rounding remainder goes to the last part, so no image is lost or used twice.
    pub fn split(&self, fractions: &[f64], seed: u64) -> anyhow::Result<Vec<Self>> {
        let total: f64 = fractions.iter().sum();
        if fractions.is_empty() || fractions.iter().any(|&f| !(0.0..=1.0).contains(&f)) || (total - 1.0).abs() > 1e-6 {
            bail!("split fractions {fractions:?} must be between 0 and 1 and sum to 1");
        }
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); fractions.len()];
        for label in 0..self.classes.len() as u32 {
            let mut idx: Vec<usize> = (0..self.len()).filter(|&i| self.labels[i] == label).collect();
            idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ u64::from(label).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let mut start = 0;
            for (k, f) in fractions.iter().enumerate() {
                let end = if k + 1 == fractions.len() { idx.len() } else { (start + (f * idx.len() as f64).round() as usize).min(idx.len()) };
                parts[k].extend_from_slice(&idx[start..end]);
                start = end;
            }
        }
        Ok(parts.into_iter().map(|mut p| {
            p.sort_unstable();
            self.subset(&p)
        }).collect())
    }
}

/// `DIR/train` and `DIR/test` of a d2l-style dataset, with the same classes.
pub fn load_train_test(dir: &Path) -> anyhow::Result<(ImageFolder, ImageFolder)> {
    load_train_test_limited(dir, None)
}

/// [`load_train_test`] with at most `limit` files per class, selected before decoding.
pub fn load_train_test_limited(dir: &Path, limit: Option<usize>) -> anyhow::Result<(ImageFolder, ImageFolder)> {
    let train_dir = dir.join("train");
    let train = ImageFolder::load_limited(&train_dir, &class_folders(&train_dir)?, limit).with_context(|| format!("loading the training split of {}", dir.display()))?;
    let test = ImageFolder::load_limited(dir.join("test"), &train.classes, limit)
        .with_context(|| format!("loading the test split of {}", dir.display()))?;
    Ok((train, test))
}
