//! Weight files: reading every tensor of a `.safetensors`, a zip `.pth` (PyTorch >= 1.6) or a
//! legacy `.pth` (PyTorch < 1.6, see [`super::legacy_pth`]), and the atomic safetensors writer
//! used for models and checkpoints (it keeps string metadata).

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Read every tensor of a weights file (on the CPU), whatever its format.
pub fn read_tensors(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut magic = [0u8; 2];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).with_context(|| format!("opening weights file {}", path.display()))?;
        f.read_exact(&mut magic).with_context(|| format!("weights file {} is empty or unreadable", path.display()))?;
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let tensors: Vec<(String, Tensor)> = if ext == "safetensors" {
        candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?
            .into_iter()
            .collect()
    } else if &magic == b"PK" {
        // Zip checkpoints: a bare state dict, or one nested under `state_dict` / `model`.
        super::zip_pth::read_zip_pth(path)?
    } else if super::legacy_pth::is_legacy_pth(path) {
        super::legacy_pth::read_legacy_pth(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        bail!(
            "{}: not a weights file this workbook reads (.safetensors, or a PyTorch .pth/.pt checkpoint)",
            path.display()
        );
    };
    super::zip_pth::check_weights(path, &tensors)?;
    let mut map = HashMap::new();
    for (k, t) in tensors {
        // DataParallel checkpoints prefix every name with `module.`.
        let k = k.strip_prefix("module.").map(str::to_string).unwrap_or(k);
        map.insert(k, t);
    }
    Ok(map)
}

/// Write tensors as safetensors with string metadata.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, metadata: HashMap<String, String>, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .with_context(|| format!("serialising {}", path.display()))?;
    // Temp + fsync + rename: an interrupted save never leaves a half-written file.
    super::atomic::write_atomic(path, &bytes)
}

/// The string metadata of a safetensors file (empty when it has none).
pub fn read_safetensors_metadata(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
