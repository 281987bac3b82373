//! The pickle VM: opcodes, the unpickler and its allow-list. Nothing is imported or executed;
//! calls to allow-listed globals are interpreted (see the module docs of `legacy_pth`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::value::{Global, StorageKind, StorageView, TensorSpec, Value};
use super::{malformed, LegacyPthError, Result};

/// Root storages referenced by persistent ids: key -> (kind, numel).
pub(super) type StorageTable = HashMap<String, (StorageKind, usize)>;

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
pub(super) fn load_pickle(
    data: &[u8],
    pos: usize,
    storages: &mut StorageTable,
) -> Result<(Value, usize)> {
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
        // Zip checkpoints write the same id without the view metadata.
        let [_, Value::Global(Global::Storage(kind)), key, _location, numel, rest @ ..] = &pid[..]
        else {
            return Err(self.err("malformed ('storage', ...) persistent id"));
        };
        let none = Value::None;
        let view = rest.first().unwrap_or(&none);
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
