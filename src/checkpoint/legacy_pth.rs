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
//! The unpickler below is a small, closed VM: it never imports or calls anything. Only an
//! allow-list of globals is recognised (see [`Global`]); every other `GLOBAL` is rejected with
//! [`LegacyPthError::ForbiddenGlobal`], and "calls" to allowed globals are interpreted by this
//! module, not executed.
//!
//! Zip-format checkpoints (the default since PyTorch 1.6) are handled by `candle_core::pickle`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

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

// ---------------------------------------------------------------------------------------------
// Checkpoint layout
// ---------------------------------------------------------------------------------------------

/// Where a storage's elements live in the file.
#[derive(Debug, Clone, Copy)]
struct StorageData {
    kind: StorageKind,
    numel: usize,
    /// Byte offset of the first element (just past the 8-byte count header).
    start: usize,
}

struct Checkpoint {
    root: Value,
    storages: HashMap<String, StorageData>,
}

fn has_magic(data: &[u8]) -> bool {
    let mut table = StorageTable::new();
    matches!(
        load_pickle(data, 0, &mut table),
        Ok((Value::Int(MAGIC_NUMBER), _))
    )
}

fn parse_checkpoint(data: &[u8]) -> Result<Checkpoint> {
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
    Ok(Checkpoint { root, storages })
}

/// Picks the dict holding the tensors (top level, or nested under a well-known key).
fn select_state_dict(root: &Value) -> Result<Vec<(Value, Value)>> {
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
fn materialize(
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

// ---------------------------------------------------------------------------------------------
// Pickle VM
// ---------------------------------------------------------------------------------------------

/// Storage element types, named after the `torch.*Storage` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageKind {
    fn from_class_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element in the file.
    fn elem_size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Candle dtype of the loaded tensor (candle has no i8 or bool).
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F64 => DType::F64,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::I16 | Self::I8 => DType::I16,
            Self::U8 | Self::Bool => DType::U8,
        }
    }
}

/// The only globals the unpickler accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageKind),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Self::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Self::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor") => Self::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Self::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Self::RebuildParameterWithState,
            ("torch" | "torch.cuda", class) => Self::Storage(StorageKind::from_class_name(class)?),
            _ => return None,
        })
    }
}

/// A (possibly offset) window onto a root storage, from a `('storage', ...)` persistent id.
#[derive(Debug)]
struct StorageView {
    key: String,
    kind: StorageKind,
    /// Element offset into the root storage (non-zero only for legacy storage views).
    offset: usize,
    len: usize,
}

#[derive(Debug)]
struct TensorSpec {
    storage: Rc<StorageView>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Unpickled values. Containers are shared (`Rc`) so memo lookups are O(1) and mutations after
/// `BINPUT` are seen by every reference, as in Python.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageView>),
    Tensor(Rc<TensorSpec>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "str",
            Self::Bytes(_) => "bytes",
            Self::Tuple(_) => "tuple",
            Self::List(_) => "list",
            Self::Dict(_) => "dict",
            Self::Global(_) => "global",
            Self::Storage(_) => "storage",
            Self::Tensor(_) => "tensor",
        }
    }

    /// Shallow rendering for error messages: never recurses, as values may be cyclic.
    fn describe(&self) -> String {
        match self {
            Self::Bool(b) => format!("{b}"),
            Self::Int(i) => format!("{i}"),
            Self::Float(f) => format!("{f}"),
            Self::Str(s) if s.len() <= 64 => format!("{s:?}"),
            Self::Bytes(b) => format!("bytes of length {}", b.len()),
            Self::Global(g) => format!("global {g:?}"),
            other => format!("a {}", other.type_name()),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    fn new_dict() -> Self {
        Self::Dict(Rc::new(RefCell::new(Vec::new())))
    }
}

/// Drops nested containers iteratively: a crafted pickle can nest millions of levels deep
/// (one byte per level with TUPLE1), which would overflow the stack with recursive drops.
impl Drop for Value {
    fn drop(&mut self) {
        fn take_children(v: &mut Value, out: &mut Vec<Value>) {
            match v {
                Value::Tuple(t) => {
                    if let Some(items) = Rc::get_mut(t) {
                        out.extend(items.iter_mut().map(|i| std::mem::replace(i, Value::None)));
                    }
                }
                Value::List(l) => {
                    if let Some(l) = Rc::get_mut(l) {
                        out.append(l.get_mut());
                    }
                }
                Value::Dict(d) => {
                    if let Some(d) = Rc::get_mut(d) {
                        out.extend(d.get_mut().drain(..).flat_map(|(k, v)| [k, v]));
                    }
                }
                _ => {}
            }
        }
        let mut pending = Vec::new();
        take_children(self, &mut pending);
        while let Some(mut v) = pending.pop() {
            take_children(&mut v, &mut pending);
        }
    }
}

/// Root storages referenced by persistent ids: key -> (kind, numel).
type StorageTable = HashMap<String, (StorageKind, usize)>;

fn malformed(offset: usize, msg: String) -> LegacyPthError {
    LegacyPthError::Malformed { offset, msg }
}

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BINFLOAT: u8 = b'G';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// Runs one pickle starting at `pos`; returns its value and the offset just past `STOP`.
/// Storages named by persistent ids are recorded in `storages`.
fn load_pickle(data: &[u8], pos: usize, storages: &mut StorageTable) -> Result<(Value, usize)> {
    let mut vm = Unpickler {
        data,
        pos,
        op_start: pos,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages,
    };
    let value = vm.run()?;
    Ok((value, vm.pos))
}

struct Unpickler<'a, 's> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    /// Stack heights at each pending MARK (Python's metastack).
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: &'s mut StorageTable,
}

impl<'a> Unpickler<'a, '_> {
    fn err(&self, msg: impl Into<String>) -> LegacyPthError {
        malformed(self.op_start, msg.into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let available = self.data.len() - self.pos;
        if n > available {
            let opcode = self.data.get(self.op_start).copied().unwrap_or(0);
            return Err(self.err(format!(
                "truncated pickle (file has {} bytes): opcode 0x{opcode:02x} needs {n} more \
                 bytes",
                self.data.len()
            )));
        }
        let data: &'a [u8] = self.data;
        let bytes = &data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32_len(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.take_array()?) as usize)
    }

    fn u64_len(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.take_array()?);
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("truncated pickle: unterminated GLOBAL name"));
        };
        let line = std::str::from_utf8(&rest[..nl])
            .map_err(|_| self.err("GLOBAL name is not valid UTF-8"))?
            .to_string();
        self.pos += nl + 1;
        Ok(line)
    }

    fn utf8(&mut self, n: usize) -> Result<Value> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.err("string is not valid UTF-8"))?;
        Ok(Value::Str(s.into()))
    }

    /// Python-2 `str`: decoded as UTF-8 like `torch.load`'s default, else kept as bytes.
    fn py2_string(&mut self, n: usize) -> Result<Value> {
        let bytes = self.take(n)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(s.into()),
            Err(_) => Value::Bytes(bytes.into()),
        })
    }

    fn long(&mut self, n: usize) -> Result<Value> {
        if n > 16 {
            return Err(self.err(format!("{n}-byte integer is too large")));
        }
        let bytes = self.take(n)?;
        let mut buf = match bytes.last() {
            Some(&b) if b & 0x80 != 0 => [0xffu8; 16], // sign-extend negatives
            _ => [0u8; 16],
        };
        buf[..n].copy_from_slice(bytes);
        Ok(Value::Int(i128::from_le_bytes(buf)))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("pickle stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.err("pickle stack underflow"))
    }

    fn top(&self) -> Result<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(v) if self.stack.len() > floor => Ok(v),
            _ => Err(self.err("pickle stack underflow")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the pickle stack"))?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = self.memo.get(&idx).cloned();
        let v = v.ok_or_else(|| self.err(format!("memo key {idx} was never stored")))?;
        self.push(v);
        Ok(())
    }

    fn global(&self, module: &str, name: &str) -> Result<Value> {
        Global::resolve(module, name)
            .map(Value::Global)
            .ok_or_else(|| LegacyPthError::ForbiddenGlobal {
                module: module.to_string(),
                name: name.to_string(),
                offset: self.op_start,
            })
    }

    fn dict_extend(&self, target: &Value, items: Vec<Value>) -> Result<()> {
        let Value::Dict(d) = target else {
            return Err(self.err(format!("SETITEM(S) on a {}", target.type_name())));
        };
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn list_extend(&self, target: &Value, items: Vec<Value>) -> Result<()> {
        match target {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            other => Err(self.err(format!("APPEND(S) on a {}", other.type_name()))),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_start = self.pos;
            let Some(&opcode) = self.data.get(self.pos) else {
                return Err(self.err("truncated pickle: file ends before the STOP opcode"));
            };
            self.pos += 1;
            match opcode {
                op::PROTO => {
                    let version = self.u8()?;
                    if version > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {version}")));
                    }
                }
                op::FRAME => {
                    self.take(8)?; // frames are only a buffering hint
                }
                op::STOP => return self.pop(),
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    self.pop()?;
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let v = self.top()?.clone();
                    self.push(v);
                }

                op::NONE => self.push(Value::None),
                op::NEWTRUE => self.push(Value::Bool(true)),
                op::NEWFALSE => self.push(Value::Bool(false)),
                op::BININT => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()));
                }
                op::BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()));
                }
                op::LONG1 => {
                    let n = self.u8()? as usize;
                    let v = self.long(n)?;
                    self.push(v);
                }
                op::LONG4 => {
                    let n = i32::from_le_bytes(self.take_array()?);
                    let n = usize::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let v = self.long(n)?;
                    self.push(v);
                }
                op::BINFLOAT => {
                    // Pickle floats are big-endian, unlike its integers.
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v));
                }

                op::BINUNICODE => {
                    let n = self.u32_len()?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                op::SHORT_BINUNICODE => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                op::BINUNICODE8 => {
                    let n = self.u64_len()?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                op::BINSTRING => {
                    let n = i32::from_le_bytes(self.take_array()?);
                    let n =
                        usize::try_from(n).map_err(|_| self.err("negative BINSTRING length"))?;
                    let v = self.py2_string(n)?;
                    self.push(v);
                }
                op::SHORT_BINSTRING => {
                    let n = self.u8()? as usize;
                    let v = self.py2_string(n)?;
                    self.push(v);
                }
                op::BINBYTES | op::SHORT_BINBYTES | op::BINBYTES8 => {
                    let n = match opcode {
                        op::BINBYTES => self.u32_len()?,
                        op::SHORT_BINBYTES => self.u8()? as usize,
                        _ => self.u64_len()?,
                    };
                    let v = Value::Bytes(self.take(n)?.into());
                    self.push(v);
                }

                op::EMPTY_TUPLE => self.push(Value::Tuple(Rc::new([]))),
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items.into()));
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(opcode - op::TUPLE1 + 1);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items.into()));
                }
                op::EMPTY_LIST => self.push(Value::List(Rc::default())),
                op::LIST => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))));
                }
                op::APPEND => {
                    let v = self.pop()?;
                    self.list_extend(self.top()?, vec![v])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.list_extend(self.top()?, items)?;
                }
                op::EMPTY_DICT => self.push(Value::new_dict()),
                op::DICT => {
                    let items = self.pop_mark()?;
                    let dict = Value::new_dict();
                    self.dict_extend(&dict, items)?;
                    self.push(dict);
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.dict_extend(self.top()?, vec![k, v])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    self.dict_extend(self.top()?, items)?;
                }

                op::BINPUT => {
                    let idx = self.u8()?.into();
                    self.memo_put(idx)?;
                }
                op::LONG_BINPUT => {
                    let idx = u32::from_le_bytes(self.take_array()?);
                    self.memo_put(idx)?;
                }
                op::MEMOIZE => {
                    let idx =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo is full"))?;
                    self.memo_put(idx)?;
                }
                op::BINGET => {
                    let idx = self.u8()?.into();
                    self.memo_get(idx)?;
                }
                op::LONG_BINGET => {
                    let idx = u32::from_le_bytes(self.take_array()?);
                    self.memo_get(idx)?;
                }

                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(&module, &name)?;
                    self.push(v);
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                        return Err(self.err("STACK_GLOBAL expects two strings"));
                    };
                    let v = self.global(module, name)?;
                    self.push(v);
                }
                op::REDUCE | op::NEWOBJ => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(&callable, &args, opcode == op::NEWOBJ)?;
                    self.push(v);
                }
                op::BUILD => {
                    let _state = self.pop()?;
                    // Only instance attributes (e.g. a state dict's `_metadata`) arrive here;
                    // they carry no tensor data, so they are dropped.
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            return Err(self.err(format!("BUILD on a {}", other.type_name())));
                        }
                    }
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v);
                }
                other => {
                    return Err(self.err(format!("unknown or unsupported opcode 0x{other:02x}")));
                }
            }
        }
    }

    /// Interprets a REDUCE/NEWOBJ on an allow-listed global.
    fn call(&mut self, callable: &Value, args: &Value, newobj: bool) -> Result<Value> {
        let Value::Global(global) = callable else {
            return Err(self.err(format!("cannot call a {}", callable.type_name())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(format!("call arguments are a {}", args.type_name())));
        };
        match global {
            Global::OrderedDict => {
                let dict = Value::new_dict();
                match &args[..] {
                    [] => {}
                    // OrderedDict([(k, v), ...])
                    [Value::List(pairs)] if !newobj => {
                        let mut items = Vec::new();
                        for pair in pairs.borrow().iter() {
                            match pair {
                                Value::Tuple(kv) if kv.len() == 2 => {
                                    items.extend(kv.iter().cloned())
                                }
                                _ => return Err(self.err("OrderedDict item is not a pair")),
                            }
                        }
                        self.dict_extend(&dict, items)?;
                    }
                    _ => return Err(self.err("unsupported OrderedDict arguments")),
                }
                Ok(dict)
            }
            _ if newobj => Err(self.err(format!("NEWOBJ on {global:?} is not supported"))),
            Global::RebuildTensorV2 | Global::RebuildTensor => self.rebuild_tensor(args),
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.err("_rebuild_parameter expects a tensor as first argument")),
            },
            Global::Storage(kind) => Err(self.err(format!(
                "{kind:?} storage class may only appear in a persistent id"
            ))),
        }
    }

    /// `_rebuild_tensor[_v2](storage, storage_offset, size, stride, ...)`; the trailing
    /// requires_grad / backward_hooks / metadata are irrelevant for loading weights.
    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(self.err(format!("_rebuild_tensor got {} arguments", args.len())));
        };
        let Value::Storage(storage) = storage else {
            let found = storage.type_name();
            return Err(self.err(format!("_rebuild_tensor expects a storage, got a {found}")));
        };
        let offset = self.usize_of(offset, "storage_offset")?;
        let size = self.usize_tuple(size, "size")?;
        let stride = self.usize_tuple(stride, "stride")?;
        if size.len() != stride.len() {
            return Err(self.err(format!(
                "size {size:?} and stride {stride:?} differ in rank"
            )));
        }
        Ok(Value::Tensor(Rc::new(TensorSpec {
            storage: storage.clone(),
            offset,
            size,
            stride,
        })))
    }

    fn usize_of(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
        .ok_or_else(|| {
            self.err(format!(
                "{what} must be a non-negative int, got {}",
                v.describe()
            ))
        })
    }

    fn usize_tuple(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        match v {
            Value::Tuple(items) => items.iter().map(|i| self.usize_of(i, what)).collect(),
            _ => Err(self.err(format!("{what} must be a tuple, got a {}", v.type_name()))),
        }
    }

    /// `('storage', torch.XStorage, key, location, numel, view_metadata)`.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let Value::Tuple(pid) = pid else {
            return Err(self.err(format!("persistent id is a {}", pid.type_name())));
        };
        match pid.first().and_then(Value::as_str) {
            Some("storage") => {}
            Some(other) => {
                return Err(self.err(format!(
                    "unsupported persistent id '{other}' (only tensor storages are supported; \
                     save a state_dict rather than a whole module)"
                )));
            }
            None => return Err(self.err("persistent id does not start with a type name")),
        }
        let [_, Value::Global(Global::Storage(kind)), key, _location, numel, view, ..] = &pid[..]
        else {
            return Err(self.err("malformed ('storage', ...) persistent id"));
        };
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => return Err(self.err(format!("storage key is a {}", other.type_name()))),
        };
        let numel = self.usize_of(numel, "storage numel")?;
        match self.storages.get(&key) {
            Some(&(k, n)) if (k, n) != (*kind, numel) => {
                return Err(self.err(format!(
                    "storage '{key}' declared as {k:?}x{n} and as {kind:?}x{numel}"
                )));
            }
            Some(_) => {}
            None => {
                self.storages.insert(key.clone(), (*kind, numel));
            }
        }
        // Pre-1.0 files may reference a slice of a root storage: (view_key, offset, size).
        let (offset, len) = match view {
            Value::None => (0, numel),
            Value::Tuple(v) if v.len() == 3 => (
                self.usize_of(&v[1], "storage view offset")?,
                self.usize_of(&v[2], "storage view size")?,
            ),
            other => {
                return Err(self.err(format!("storage view metadata is a {}", other.type_name())));
            }
        };
        let view = StorageView {
            key,
            kind: *kind,
            offset,
            len,
        };
        Ok(Value::Storage(Rc::new(view)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = std::result::Result<(), Box<dyn std::error::Error>>;

    /// Minimal pickle assembler for hand-written fixtures.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, op: u8) -> &mut Self {
            self.0.push(op);
            self
        }
        fn proto2(&mut self) -> &mut Self {
            self.0.extend([op::PROTO, 2]);
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(op::GLOBAL);
            self.0
                .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(op::BINUNICODE);
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn int(&mut self, v: i32) -> &mut Self {
            self.0.push(op::BININT);
            self.0.extend(v.to_le_bytes());
            self
        }
        fn put(&mut self, idx: u8) -> &mut Self {
            self.0.extend([op::BINPUT, idx]);
            self
        }
        fn get(&mut self, idx: u8) -> &mut Self {
            self.0.extend([op::BINGET, idx]);
            self
        }
        fn ints(&mut self, vs: &[i32]) -> &mut Self {
            self.op(op::MARK);
            for &v in vs {
                self.int(v);
            }
            self.op(op::TUPLE)
        }
        /// `_rebuild_tensor_v2(<storage pid>, offset, size, stride, False, OrderedDict())`.
        /// Memo 0 must hold `_rebuild_tensor_v2`, memo 1 `OrderedDict`.
        fn tensor(
            &mut self,
            storage: (&str, &str, i32),
            offset: i32,
            size: &[i32],
            stride: &[i32],
        ) -> &mut Self {
            let (class, key, numel) = storage;
            self.get(0)
                .op(op::MARK)
                .op(op::MARK)
                .str("storage")
                .global("torch", class);
            self.str(key)
                .str("cpu")
                .int(numel)
                .op(op::NONE)
                .op(op::TUPLE)
                .op(op::BINPERSID);
            self.int(offset).ints(size).ints(stride).op(op::NEWFALSE);
            self.get(1)
                .op(op::EMPTY_TUPLE)
                .op(op::REDUCE)
                .op(op::TUPLE)
                .op(op::REDUCE)
        }
        fn stop(&mut self) -> Vec<u8> {
            self.0.push(op::STOP);
            std::mem::take(&mut self.0)
        }
    }

    fn header() -> Vec<u8> {
        let mut out = Vec::new();
        // Magic number as LONG1, exactly as CPython writes it.
        out.extend([op::PROTO, 2, op::LONG1, 10]);
        out.extend(&MAGIC_NUMBER.to_le_bytes()[..10]);
        out.push(op::STOP);
        out.extend(Pickle::default().proto2().int(1001).stop());
        let mut sys = Pickle::default();
        sys.proto2()
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("protocol_version")
            .int(1001);
        sys.str("little_endian")
            .op(op::NEWTRUE)
            .str("type_sizes")
            .op(op::EMPTY_DICT);
        sys.op(op::MARK)
            .str("short")
            .int(2)
            .str("int")
            .int(4)
            .str("long")
            .int(4);
        out.extend(sys.op(op::SETITEMS).op(op::SETITEMS).stop());
        out
    }

    fn storage_keys(keys: &[&str]) -> Vec<u8> {
        let mut p = Pickle::default();
        p.proto2().op(op::EMPTY_LIST).op(op::MARK);
        for k in keys {
            p.str(k);
        }
        p.op(op::APPENDS).stop()
    }

    fn storage_data<T: Copy>(values: &[T], to_le: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
        let mut out = (values.len() as i64).to_le_bytes().to_vec();
        values.iter().for_each(|&v| out.extend(to_le(v)));
        out
    }

    /// OrderedDict with a [2,3] f32 tensor, its transpose, an offset slice of the same
    /// storage, an int (to be skipped) and an i64 tensor from a second storage.
    fn fixture() -> Vec<u8> {
        let mut out = header();
        let f32s = ("FloatStorage", "0", 6);
        let mut p = Pickle::default();
        p.proto2()
            .global("torch._utils", "_rebuild_tensor_v2")
            .put(0)
            .op(op::POP);
        p.global("collections", "OrderedDict").put(1).op(op::POP);
        p.get(1)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .put(2)
            .op(op::MARK);
        p.str("w").tensor(f32s, 0, &[2, 3], &[3, 1]);
        p.str("w_t").tensor(f32s, 0, &[3, 2], &[1, 3]);
        p.str("tail").tensor(f32s, 2, &[2, 2], &[1, 2]);
        p.str("num_batches").int(7);
        p.str("idx").tensor(("LongStorage", "1", 3), 0, &[3], &[1]);
        p.op(op::SETITEMS);
        // state_dict._metadata, as torch writes it.
        p.op(op::EMPTY_DICT)
            .str("_metadata")
            .get(1)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE);
        p.op(op::SETITEM).op(op::BUILD);
        out.extend(p.stop());
        out.extend(storage_keys(&["0", "1"]));
        out.extend(storage_data(&[0f32, 1., 2., 3., 4., 5.], |v| {
            v.to_le_bytes().to_vec()
        }));
        out.extend(storage_data(&[-1i64, 0, 1 << 40], |v| {
            v.to_le_bytes().to_vec()
        }));
        out
    }

    fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        std::io::Write::write_all(&mut f, bytes).expect("write fixture");
        f
    }

    fn by_name<'a>(ts: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
        &ts.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .1
    }

    #[test]
    fn reads_hand_assembled_checkpoint() -> R {
        let file = write_tmp(&fixture());
        assert!(is_legacy_pth(file.path()));
        let ts = read_legacy_pth(file.path())?;
        let names: Vec<_> = ts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w", "w_t", "tail", "idx"]);

        let w = by_name(&ts, "w");
        assert_eq!((w.dims(), w.dtype()), (&[2, 3][..], DType::F32));
        assert_eq!(w.to_vec2::<f32>()?, [[0., 1., 2.], [3., 4., 5.]]);
        let w_t = by_name(&ts, "w_t");
        assert!(w_t.is_contiguous());
        assert_eq!(w_t.to_vec2::<f32>()?, [[0., 3.], [1., 4.], [2., 5.]]);
        assert_eq!(by_name(&ts, "tail").to_vec2::<f32>()?, [[2., 4.], [3., 5.]]);
        let idx = by_name(&ts, "idx");
        assert_eq!(idx.dtype(), DType::I64);
        assert_eq!(idx.to_vec1::<i64>()?, [-1, 0, 1 << 40]);
        Ok(())
    }

    #[test]
    fn state_dict_nested_under_key() -> R {
        let mut out = header();
        let mut p = Pickle::default();
        p.proto2()
            .global("torch._utils", "_rebuild_tensor_v2")
            .put(0)
            .op(op::POP);
        p.global("collections", "OrderedDict").put(1).op(op::POP);
        p.op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("epoch")
            .int(3)
            .str("state_dict");
        p.get(1).op(op::EMPTY_TUPLE).op(op::REDUCE).op(op::MARK);
        p.str("h").tensor(("HalfStorage", "0", 2), 0, &[2], &[1]);
        p.op(op::SETITEMS).op(op::SETITEMS);
        out.extend(p.stop());
        out.extend(storage_keys(&["0"]));
        out.extend(storage_data(&[0x3c00u16, 0xc000], |v| {
            v.to_le_bytes().to_vec()
        }));
        let ts = read_legacy_pth_bytes(&out)?;
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].1.dtype(), DType::F16);
        assert_eq!(ts[0].1.to_dtype(DType::F32)?.to_vec1::<f32>()?, [1.0, -2.0]);
        Ok(())
    }

    #[test]
    fn foreign_global_is_refused() {
        let mut out = header();
        let mut p = Pickle::default();
        p.proto2()
            .global("os", "system")
            .str("echo pwned")
            .op(op::TUPLE1)
            .op(op::REDUCE);
        out.extend(p.stop());
        let err = read_legacy_pth_bytes(&out).expect_err("os.system must be refused");
        let msg = err.to_string();
        assert!(
            matches!(err, LegacyPthError::ForbiddenGlobal { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("os.system") && msg.contains("byte offset"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_storage_names_key_and_offsets() {
        let full = fixture();
        let file = write_tmp(&full[..full.len() - 5]);
        let err = read_legacy_pth(file.path()).expect_err("truncated");
        let msg = err.to_string();
        let expected = format!(
            "storage '1' ends at byte {} but file has {}",
            full.len(),
            full.len() - 5
        );
        assert!(msg.contains(&expected), "{msg}");
    }

    #[test]
    fn truncated_pickle_reports_offset() {
        let full = fixture();
        let cut = header().len() + 40;
        let err = read_legacy_pth_bytes(&full[..cut]).expect_err("truncated");
        assert!(matches!(err, LegacyPthError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("byte offset"), "{err}");
    }

    #[test]
    fn unknown_opcode_reports_offset() {
        let mut out = header();
        let at = out.len() + 2;
        out.extend([op::PROTO, 2, 0xff, op::STOP]);
        let err = read_legacy_pth_bytes(&out).expect_err("bad opcode");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("opcode 0xff at byte offset {at}")),
            "{msg}"
        );
    }

    #[test]
    fn out_of_bounds_view_names_tensor() {
        let mut out = header();
        let mut p = Pickle::default();
        p.proto2()
            .global("torch._utils", "_rebuild_tensor_v2")
            .put(0)
            .op(op::POP);
        p.global("collections", "OrderedDict").put(1).op(op::POP);
        p.get(1).op(op::EMPTY_TUPLE).op(op::REDUCE).op(op::MARK);
        p.str("bad").tensor(("FloatStorage", "0", 2), 1, &[2], &[1]);
        out.extend(p.op(op::SETITEMS).stop());
        out.extend(storage_keys(&["0"]));
        out.extend(storage_data(&[1f32, 2.], |v| v.to_le_bytes().to_vec()));
        let err = read_legacy_pth_bytes(&out).expect_err("out of bounds");
        assert!(err.to_string().starts_with("tensor 'bad':"), "{err}");
    }

    #[test]
    fn deep_nesting_and_cycles_do_not_crash() {
        // ((((...),),),) a million levels deep: one byte per level.
        let mut out = header();
        let mut deep = vec![op::PROTO, 2, op::EMPTY_TUPLE];
        deep.resize(deep.len() + 1_000_000, op::TUPLE1);
        deep.push(op::STOP);
        out.extend(deep);
        out.extend(storage_keys(&[]));
        let err = read_legacy_pth_bytes(&out).expect_err("a tuple is not a state dict");
        assert!(
            err.to_string().contains("top-level object is a tuple"),
            "{err}"
        );

        // A list containing itself, passed as storage_offset.
        let mut out = header();
        let mut p = Pickle::default();
        p.proto2()
            .global("torch._utils", "_rebuild_tensor_v2")
            .put(0)
            .op(op::POP);
        p.global("collections", "OrderedDict").put(1).op(op::POP);
        p.get(1)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .str("t")
            .get(0)
            .op(op::MARK);
        p.op(op::MARK)
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu");
        p.int(1).op(op::NONE).op(op::TUPLE).op(op::BINPERSID);
        p.op(op::EMPTY_LIST).put(9).get(9).op(op::APPEND);
        p.ints(&[1])
            .ints(&[1])
            .op(op::TUPLE)
            .op(op::REDUCE)
            .op(op::SETITEM);
        out.extend(p.stop());
        let err = read_legacy_pth_bytes(&out).expect_err("cyclic offset");
        assert!(
            err.to_string()
                .contains("storage_offset must be a non-negative int"),
            "{err}"
        );
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let good = fixture();
        for cut in 0..good.len() {
            assert!(
                read_legacy_pth_bytes(&good[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        for pos in 0..good.len() {
            for flip in [0x00, 0xff, good[pos] ^ 0x80, good[pos].wrapping_add(1)] {
                let mut bad = good.clone();
                bad[pos] = flip;
                let _ = read_legacy_pth_bytes(&bad);
            }
        }
    }

    #[test]
    fn huge_broadcast_fails_cleanly() {
        let mut out = header();
        let mut p = Pickle::default();
        p.proto2()
            .global("torch._utils", "_rebuild_tensor_v2")
            .put(0)
            .op(op::POP);
        p.global("collections", "OrderedDict").put(1).op(op::POP);
        p.get(1).op(op::EMPTY_TUPLE).op(op::REDUCE).op(op::MARK);
        let huge = 1 << 20; // 2^60 elements: no overflow, but no allocator will oblige
        p.str("big")
            .tensor(("FloatStorage", "0", 1), 0, &[huge, huge, huge], &[0, 0, 0]);
        out.extend(p.op(op::SETITEMS).stop());
        out.extend(storage_keys(&["0"]));
        out.extend(storage_data(&[1f32], |v| v.to_le_bytes().to_vec()));
        let err = read_legacy_pth_bytes(&out).expect_err("too big");
        assert!(
            err.to_string().starts_with("tensor 'big': cannot allocate"),
            "{err}"
        );
    }

    #[test]
    fn zip_and_garbage_are_not_legacy() {
        let zip = write_tmp(b"PK\x03\x04rest-of-zip");
        assert!(!is_legacy_pth(zip.path()));
        assert!(matches!(
            read_legacy_pth(zip.path()),
            Err(LegacyPthError::NotLegacy(_))
        ));
        assert!(!is_legacy_pth("/nonexistent/file.pth"));
        let pickle = write_tmp(&Pickle::default().proto2().int(1).stop());
        assert!(!is_legacy_pth(pickle.path()));
    }

    #[test]
    fn converts_into_candle_error() {
        let err: candle_core::Error = LegacyPthError::NotLegacy("x".into()).into();
        assert!(err.to_string().contains("not a legacy"));
    }
}
