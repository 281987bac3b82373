//! Values produced by the unpickler: the allow-listed globals, storage views and tensor specs.

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::DType;

/// Storage element types, named after the `torch.*Storage` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StorageKind {
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
    pub(super) fn from_class_name(name: &str) -> Option<Self> {
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
    pub(super) fn elem_size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Candle dtype of the loaded tensor (candle has no i8 or bool).
    pub(super) fn dtype(self) -> DType {
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
pub(super) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageKind),
}

impl Global {
    pub(super) fn resolve(module: &str, name: &str) -> Option<Self> {
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
pub(super) struct StorageView {
    pub(super) key: String,
    pub(super) kind: StorageKind,
    /// Element offset into the root storage (non-zero only for legacy storage views).
    pub(super) offset: usize,
    pub(super) len: usize,
}

#[derive(Debug)]
pub(super) struct TensorSpec {
    pub(super) storage: Rc<StorageView>,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// Unpickled values. Containers are shared (`Rc`) so memo lookups are O(1) and mutations after
/// `BINPUT` are seen by every reference, as in Python.
#[derive(Debug, Clone)]
pub(super) enum Value {
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
    pub(super) fn type_name(&self) -> &'static str {
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
    pub(super) fn describe(&self) -> String {
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

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn new_dict() -> Self {
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
