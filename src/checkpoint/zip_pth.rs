//! Zip `.pth` checkpoints (PyTorch >= 1.6): Candle's pickle reader finds the tensors
//! (storage, offset, shape, strides), and the data is gathered here, whatever the strides.
//! Candle's own loader refuses tensors that are neither C- nor Fortran-contiguous, which is
//! what `torch.save` writes for the real EfficientNet-Lite0 weights (its stem weight has
//! strides (1, 32, 288, 96)): every such file was reported as "no tensors found".

use anyhow::{bail, Context};
use candle_core::pickle::{read_pth_tensor_info, TensorInfo};
use candle_core::{DType, Device, Tensor};
use std::io::Read;
use std::path::Path;

/// Every tensor of a zip `.pth`: a bare state dict, or one nested under `state_dict` / `model`.
pub fn read_zip_pth(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a readable PyTorch zip checkpoint (truncated or corrupt?)", path.display()))?;
    // Candle's pickle reader accepts any global: the allow-list is checked first.
    let pickle_name = zip.file_names().find(|n| n.ends_with("/data.pkl") || *n == "data.pkl").map(str::to_string);
    if let Some(name) = pickle_name {
        let mut pickle = Vec::new();
        zip.by_name(&name)
            .and_then(|mut f| f.read_to_end(&mut pickle).map_err(Into::into))
            .with_context(|| format!("{}: reading {name} (truncated or corrupt?)", path.display()))?;
        super::legacy_pth::check_pickle_globals(&pickle).with_context(|| format!("{}: {name}", path.display()))?;
    }
    let mut infos = Vec::new();
    let mut first_error = None;
    for key in [None, Some("state_dict"), Some("model")] {
        match read_pth_tensor_info(path, false, key) {
            Ok(t) if !t.is_empty() => {
                infos = t;
                break;
            }
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if infos.is_empty() {
        match first_error {
            Some(e) => bail!("{}: cannot read this PyTorch zip checkpoint: {e}", path.display()),
            None => bail!("{}: no tensors found in this PyTorch zip checkpoint (nor under 'state_dict' or 'model')", path.display()),
        }
    }
    infos
        .into_iter()
        .map(|info| {
            let t = read_tensor(&mut zip, &info).with_context(|| format!("{}: tensor '{}'", path.display(), info.name))?;
            Ok((info.name, t))
        })
        .collect()
}

/// Gather one tensor from its storage record, element by element through its strides.
fn read_tensor<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, info: &TensorInfo) -> anyhow::Result<Tensor> {
    let mut storage = Vec::new();
    zip.by_name(&info.path)
        .with_context(|| format!("storage record {}", info.path))?
        .read_to_end(&mut storage)
        .with_context(|| format!("reading storage record {} (truncated file?)", info.path))?;
    let esize = info.dtype.size_in_bytes();
    let dims = info.layout.dims().to_vec();
    let strides = info.layout.stride().to_vec();
    // Candle keeps the storage offset in bytes.
    let offset = info.layout.start_offset() / esize;
    let numel: usize = dims.iter().product();
    if numel > 0 {
        let last: usize = offset + dims.iter().zip(&strides).map(|(d, s)| (d - 1) * s).sum::<usize>();
        if (last + 1) * esize > storage.len() {
            bail!("its storage {} holds {} bytes, the tensor needs {}", info.path, storage.len(), (last + 1) * esize);
        }
    }
    let mut out = Vec::with_capacity(numel * esize);
    let mut index = vec![0usize; dims.len()];
    for _ in 0..numel {
        let e = offset + index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[e * esize..(e + 1) * esize]);
        // Next index, last dimension fastest (C order).
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(Tensor::from_raw_buffer(&out, info.dtype, &dims, &Device::Cpu)?)
}

/// Refuse tensors a model cannot use, naming them: integer or boolean tensors other than
/// BatchNorm's `num_batches_tracked` counters, and floating-point tensors holding NaN or
/// infinity (before, all-NaN weights trained a whole epoch and then blamed the learning rate).
pub fn check_weights(origin: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
    for (name, t) in tensors {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        match t.dtype() {
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 => {
                let bad = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().filter(|v| !v.is_finite()).count();
                if bad > 0 {
                    bail!("{}: tensor '{name}' holds {bad} NaN or infinite values of {}: the file is corrupt", origin.display(), t.elem_count());
                }
                // A variance below 0 makes BatchNorm's sqrt NaN at the first forward pass.
                if name.ends_with("running_var") {
                    let negative = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().filter(|v| **v < 0.0).count();
                    if negative > 0 {
                        bail!("{}: tensor '{name}' holds {negative} negative values of {}: a BatchNorm variance is never below 0, the file is corrupt", origin.display(), t.elem_count());
                    }
                }
            }
            other => bail!("{}: tensor '{name}' is {other:?}, not floating point: these are not model weights", origin.display()),
        }
    }
    Ok(())
}
