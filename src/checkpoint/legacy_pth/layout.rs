//! The legacy file layout (magic number, protocol, sys_info, main pickle, storage keys, raw
//! storages) and tensor materialisation (views, offsets, strides, dtypes).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::pickle::{load_pickle, StorageTable};
use super::value::{StorageKind, TensorSpec, Value};
use super::{
    malformed, LegacyPthError, Result, MAGIC_NUMBER, NESTED_STATE_DICT_KEYS, PROTOCOL_VERSION,
};

/// Where a storage's elements live in the file.
#[derive(Debug, Clone, Copy)]
pub(super) struct StorageData {
    kind: StorageKind,
    numel: usize,
    /// Byte offset of the first element (just past the 8-byte count header).
    start: usize,
}

pub(super) struct LegacyFile {
    pub(super) root: Value,
    pub(super) storages: HashMap<String, StorageData>,
}

pub(super) fn has_magic(data: &[u8]) -> bool {
    let mut table = StorageTable::new();
    matches!(
        load_pickle(data, 0, &mut table),
        Ok((Value::Int(MAGIC_NUMBER), _))
    )
}

pub(super) fn parse_checkpoint(data: &[u8]) -> Result<LegacyFile> {
    if data.starts_with(b"PK") {
        return Err(LegacyPthError::NotLegacy(
            "file is a zip archive (PyTorch >= 1.6 format); use candle_core::pickle".into(),
        ));
    }
    if !has_magic(data) {
        return Err(LegacyPthError::NotLegacy(
            "file does not start with the torch.save magic number".into(),
        ));
    }
    let mut table = StorageTable::new();
    let (_magic, pos) = load_pickle(data, 0, &mut table)?;

    let version_at = pos;
    let (version, pos) = load_pickle(data, pos, &mut table)?;
    if !matches!(version, Value::Int(PROTOCOL_VERSION)) {
        return Err(malformed(
            version_at,
            format!(
                "unsupported serialization protocol {}, expected {PROTOCOL_VERSION}",
                version.describe()
            ),
        ));
    }

    let sys_info_at = pos;
    let (sys_info, pos) = load_pickle(data, pos, &mut table)?;
    if let Value::Dict(d) = &sys_info {
        let big_endian = d
            .borrow()
            .iter()
            .any(|(k, v)| k.as_str() == Some("little_endian") && matches!(v, Value::Bool(false)));
        if big_endian {
            return Err(malformed(
                sys_info_at,
                "big-endian checkpoints are not supported".into(),
            ));
        }
    }

    let (root, pos) = load_pickle(data, pos, &mut table)?;

    let keys_at = pos;
    let (keys, mut pos) = load_pickle(data, pos, &mut table)?;
    let keys: Vec<Value> = match &keys {
        Value::List(l) => l.borrow().clone(),
        Value::Tuple(t) => t.to_vec(),
        other => {
            let msg = format!(
                "expected the list of storage keys, got {}",
                other.type_name()
            );
            return Err(malformed(keys_at, msg));
        }
    };

    let mut storages = HashMap::with_capacity(keys.len());
    for key in keys {
        let key = key
            .as_str()
            .ok_or_else(|| malformed(keys_at, format!("storage key is a {}", key.type_name())))?
            .to_string();
        let Some(&(kind, numel)) = table.get(&key) else {
            let msg = "listed in the storage keys but never referenced by the pickle".into();
            return Err(LegacyPthError::Storage { key, msg });
        };
        let header_end = pos + 8;
        let Some(header) = data.get(pos..header_end) else {
            let (end, file_len) = (header_end as u128, data.len());
            return Err(LegacyPthError::StorageTruncated { key, end, file_len });
        };
        let mut count = [0u8; 8];
        count.copy_from_slice(header);
        let count = i64::from_le_bytes(count);
        if usize::try_from(count).ok() != Some(numel) {
            let msg = format!(
                "data header at byte {pos} says {count} elements but the pickle says {numel}"
            );
            return Err(LegacyPthError::Storage { key, msg });
        }
        let end = header_end as u128 + numel as u128 * kind.elem_size() as u128;
        if end > data.len() as u128 {
            let file_len = data.len();
            return Err(LegacyPthError::StorageTruncated { key, end, file_len });
        }
        storages.insert(
            key,
            StorageData {
                kind,
                numel,
                start: header_end,
            },
        );
        pos = end as usize; // fits: end <= data.len()
    }
    Ok(LegacyFile { root, storages })
}

/// Picks the dict holding the tensors (top level, or nested under a well-known key).
pub(super) fn select_state_dict(root: &Value) -> Result<Vec<(Value, Value)>> {
    let Value::Dict(top) = root else {
        return Err(LegacyPthError::NotLegacy(format!(
            "top-level object is a {}, expected a dict of tensors",
            root.type_name()
        )));
    };
    let top = top.borrow();
    if top.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
        return Ok(top.clone());
    }
    for wanted in NESTED_STATE_DICT_KEYS {
        let nested = top.iter().rev().find_map(|(k, v)| match v {
            Value::Dict(d) if k.as_str() == Some(wanted) => Some(d.borrow().clone()),
            _ => None,
        });
        if let Some(nested) = nested {
            return Ok(nested);
        }
    }
    Ok(top.clone())
}

/// Copies a tensor's elements out of its storage, honouring offset and strides.
pub(super) fn materialize(
    key: &str,
    spec: &TensorSpec,
    storages: &HashMap<String, StorageData>,
    data: &[u8],
) -> Result<Tensor> {
    let tensor_err = |msg: String| LegacyPthError::Tensor {
        key: key.to_string(),
        msg,
    };
    let view = &spec.storage;
    let storage = storages.get(&view.key).ok_or_else(|| {
        tensor_err(format!(
            "storage '{}' has no data section in the file",
            view.key
        ))
    })?;
    if storage.kind != view.kind {
        return Err(tensor_err(format!(
            "storage '{}' is used as both {:?} and {:?}",
            view.key, storage.kind, view.kind
        )));
    }
    if view
        .offset
        .checked_add(view.len)
        .is_none_or(|end| end > storage.numel)
    {
        return Err(tensor_err(format!(
            "storage view [{}, +{}) exceeds storage '{}' of {} elements",
            view.offset, view.len, view.key, storage.numel
        )));
    }

    let size = &spec.size;
    let numel = size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| tensor_err(format!("size {size:?} overflows")))?;
    let dtype = view.kind.dtype();
    if numel == 0 {
        return Tensor::zeros(size.as_slice(), dtype, &Device::Cpu).map_err(|source| {
            LegacyPthError::Candle {
                key: key.to_string(),
                source,
            }
        });
    }
    // Strides are non-negative, so the last element visited has the largest index.
    let in_bounds = size
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |acc, (&d, &s)| {
            acc.checked_add((d - 1).checked_mul(s)?)
        })
        .is_some_and(|last| last < view.len);
    if !in_bounds {
        return Err(tensor_err(format!(
            "offset {} with size {size:?} and stride {:?} reads past storage '{}' ({} elements)",
            spec.offset, spec.stride, view.key, view.len
        )));
    }

    let es = view.kind.elem_size();
    // A zero stride lets a tiny storage describe a huge tensor; fail cleanly, not by aborting.
    let mut bytes = Vec::new();
    numel
        .checked_mul(es)
        .filter(|&n| n <= isize::MAX as usize)
        .and_then(|n| bytes.try_reserve_exact(n).ok())
        .ok_or_else(|| tensor_err(format!("cannot allocate {numel} elements of {dtype:?}")))?;
    // In bounds: the whole storage was checked against the file length when indexing it.
    let base = storage.start + (view.offset + spec.offset) * es;
    if is_row_major(size, &spec.stride) {
        bytes.extend_from_slice(&data[base..base + numel * es]);
    } else {
        gather(&mut bytes, &data[base..], size, &spec.stride, es, numel);
    }
    if cfg!(target_endian = "big") {
        bytes.chunks_exact_mut(es).for_each(|c| c.reverse());
    }

    let tensor = match view.kind {
        StorageKind::I8 => {
            let values: Vec<i16> = bytes.iter().map(|&b| i16::from(b as i8)).collect();
            Tensor::from_vec(values, size.as_slice(), &Device::Cpu)
        }
        StorageKind::Bool => {
            let values: Vec<u8> = bytes.iter().map(|&b| u8::from(b != 0)).collect();
            Tensor::from_vec(values, size.as_slice(), &Device::Cpu)
        }
        _ => Tensor::from_raw_buffer(&bytes, dtype, size, &Device::Cpu),
    };
    tensor.map_err(|source| LegacyPthError::Candle {
        key: key.to_string(),
        source,
    })
}

fn is_row_major(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in size.iter().zip(stride).rev() {
        // Strides of length-1 dims never matter.
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

/// Strided copy; `src` starts at the view's first element. Bounds were validated by the caller.
fn gather(
    out: &mut Vec<u8>,
    src: &[u8],
    size: &[usize],
    stride: &[usize],
    es: usize,
    numel: usize,
) {
    let mut idx = vec![0usize; size.len()];
    let mut cur = 0usize; // element offset of `idx`
    for _ in 0..numel {
        out.extend_from_slice(&src[cur * es..(cur + 1) * es]);
        for d in (0..size.len()).rev() {
            if idx[d] + 1 < size[d] {
                idx[d] += 1;
                cur += stride[d];
                break;
            }
            cur -= stride[d] * (size[d] - 1);
            idx[d] = 0;
        }
    }
}
