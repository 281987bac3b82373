//! Reader for *legacy* PyTorch checkpoints: the pre-1.6, non-zip format written by
//! `torch.save(obj, f, _use_new_zipfile_serialization=False)`.
//!
//! Layout of such a file (all pickles are protocol 2 unless the writer chose otherwise):
//!
//! 1. pickle of the magic number `0x1950a86a20f9469cfc6c`,
//! 2. pickle of the protocol version `1001`,
//! 3. pickle of a `sys_info` dict (`little_endian`, `type_sizes`, ...),
//! 4. pickle of the saved object (usually an `OrderedDict` state dict). Tensors are
//!    `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls whose storage
//!    is a persistent id `('storage', torch.FloatStorage, key, location, numel, view_metadata)`,
//! 5. pickle of the list of storage keys,
//! 6. for each key, in that order: an `i64` little-endian element count followed by the raw
//!    little-endian storage bytes.
//!
//! Safety rules: the unpickler (`pickle.rs`) is a small, closed VM. It never imports or calls
//! anything. Only an allow-list of globals is recognised (`value::Global`: `OrderedDict`, the
//! `torch._utils._rebuild_*` functions and the `torch.*Storage` classes); every other `GLOBAL`
//! or `STACK_GLOBAL` is rejected with [`LegacyPthError::ForbiddenGlobal`], naming the global
//! and its byte offset, and "calls" (`REDUCE`, `NEWOBJ`) to allowed globals are interpreted by
//! the VM, not executed. Hostile input never panics: every length and index is checked against
//! the file, containers are shared (`Rc`) so memo references cost O(1), nesting is dropped
//! iteratively, and tensors are allocated fallibly. Errors name the byte offset of the offending
//! opcode, or the storage / tensor they concern.
//!
//! Modules: `pickle` (the VM: opcodes, unpickler, allow-list checks), `value` (the values it
//! produces: allow-listed globals, storage views, tensor specs), `layout` (the sequence of
//! pickles and raw storages, and tensor materialisation: views, offsets, strides, dtypes).
//! The tests live in `tests/legacy_pth_vm.rs` (hand-assembled pickles) and
//! `tests/legacy_pth.rs` (files written by Python).
//!
//! Zip-format checkpoints (the default since PyTorch 1.6) are handled by `candle_core::pickle`.
//! Its `Stack` is not reused here: it accepts any global, lacks opcodes CPython emits (`POP`,
//! `DUP`, `LIST`, `BINSTRING`, protocol 4), deep-copies on memo reads (a 174-byte pickle grows
//! to gigabytes), drops nested values recursively (a deep nest aborts the process), decodes the
//! 10-byte magic `LONG1` lossily (and panics on it with overflow checks), and reports no offsets.

mod layout;
mod pickle;
mod value;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use layout::{has_magic, materialize, parse_checkpoint, select_state_dict};
use value::Value;

/// `torch.serialization.MAGIC_NUMBER`.
const MAGIC_NUMBER: i128 = 0x1950a86a20f9469cfc6c;
/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i128 = 1001;
/// Keys under which training scripts commonly nest the state dict.
const NESTED_STATE_DICT_KEYS: [&str; 2] = ["state_dict", "model"];

/// Errors from reading a legacy checkpoint. Converts into [`candle_core::Error`].
#[derive(Debug, thiserror::Error)]
pub enum LegacyPthError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a legacy (non-zip) PyTorch checkpoint: {0}")]
    NotLegacy(String),
    #[error("{msg} at byte offset {offset}")]
    Malformed { offset: usize, msg: String },
    #[error(
        "pickle global {module}.{name} at byte offset {offset} is not allowed \
         (only PyTorch tensor/storage rebuild globals are accepted; nothing is executed)"
    )]
    ForbiddenGlobal {
        module: String,
        name: String,
        offset: usize,
    },
    #[error("storage '{key}' ends at byte {end} but file has {file_len} bytes")]
    StorageTruncated {
        key: String,
        end: u128,
        file_len: usize,
    },
    #[error("storage '{key}': {msg}")]
    Storage { key: String, msg: String },
    #[error("tensor '{key}': {msg}")]
    Tensor { key: String, msg: String },
    #[error("tensor '{key}': {source}")]
    Candle {
        key: String,
        #[source]
        source: candle_core::Error,
    },
}

impl From<LegacyPthError> for candle_core::Error {
    fn from(err: LegacyPthError) -> Self {
        candle_core::Error::wrap(err)
    }
}

pub type Result<T> = std::result::Result<T, LegacyPthError>;

/// Returns true if `path` starts with the legacy `torch.save` magic-number pickle.
/// Zip checkpoints (starting with `PK`), unreadable files and anything else give false.
pub fn is_legacy_pth(path: impl AsRef<Path>) -> bool {
    // The magic pickle is 15 bytes at protocol 2; leave room for a protocol-4 FRAME header.
    let mut head = Vec::with_capacity(64);
    let read = std::fs::File::open(path.as_ref()).and_then(|f| f.take(64).read_to_end(&mut head));
    read.is_ok() && has_magic(&head)
}

/// Reads every tensor of a legacy checkpoint's state dict, in file order, onto the CPU.
///
/// The state dict is the top-level dict if it holds any tensor, otherwise the dict found under
/// `state_dict` or `model`. Non-tensor entries (ints, nested dicts, ...) are skipped. Dtypes are
/// kept, except `torch.int8` (widened to `I16`) and `torch.bool` (read as `U8`), which candle
/// lacks. Strided views are materialised as contiguous tensors.
pub fn read_legacy_pth(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|source| LegacyPthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_legacy_pth_bytes(&data)
}

/// Same as [`read_legacy_pth`] for a checkpoint already in memory.
pub fn read_legacy_pth_bytes(data: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let ckpt = parse_checkpoint(data)?;
    let entries = select_state_dict(&ckpt.root)?;

    // Python dict semantics: a repeated key keeps its first position but takes the last value.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (key, value) in entries {
        let (Value::Str(key), Value::Tensor(spec)) = (&key, &value) else {
            continue;
        };
        let tensor = materialize(key, spec, &ckpt.storages, data)?;
        match index.get(&**key) {
            Some(&i) => out[i].1 = tensor,
            None => {
                index.insert(key.to_string(), out.len());
                out.push((key.to_string(), tensor));
            }
        }
    }
    Ok(out)
}

/// Run a zip checkpoint's `data.pkl` through this VM for its globals alone: a global outside
/// the allow-list (a code payload such as `posix.system`) is [`LegacyPthError::ForbiddenGlobal`];
/// any other problem is left to the zip reader, which reports it with the tensors.
pub fn check_pickle_globals(pickle: &[u8]) -> Result<()> {
    let mut table = pickle::StorageTable::new();
    match pickle::load_pickle(pickle, 0, &mut table) {
        Err(e @ LegacyPthError::ForbiddenGlobal { .. }) => Err(e),
        _ => Ok(()),
    }
}

fn malformed(offset: usize, msg: String) -> LegacyPthError {
    LegacyPthError::Malformed { offset, msg }
}
