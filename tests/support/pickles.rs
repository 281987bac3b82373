//! Hand-assembled legacy `.pth` checkpoints for `legacy_pth_vm.rs`: a minimal pickle assembler,
//! the three header pickles `torch.save` writes (magic number, protocol, sys_info), the storage
//! key list and the raw storage sections (layout in `src/checkpoint/legacy_pth/mod.rs`).

/// `torch.serialization.MAGIC_NUMBER`.
pub const MAGIC_NUMBER: i128 = 0x1950a86a20f9469cfc6c;

/// The pickle opcodes the fixtures use (values from CPython's `pickletools`).
pub mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const BININT: u8 = b'J';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const PROTO: u8 = 0x80;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
}

/// Minimal pickle assembler for hand-written fixtures.
#[derive(Default)]
pub struct Pickle(Vec<u8>);

impl Pickle {
    /// Bytes assembled so far (the offset of the next opcode).
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    pub fn proto2(&mut self) -> &mut Self {
        self.0.extend([op::PROTO, 2]);
        self
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(op::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(op::BINUNICODE);
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.0.push(op::BININT);
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn put(&mut self, idx: u8) -> &mut Self {
        self.0.extend([op::BINPUT, idx]);
        self
    }
    pub fn get(&mut self, idx: u8) -> &mut Self {
        self.0.extend([op::BINGET, idx]);
        self
    }
    pub fn ints(&mut self, vs: &[i32]) -> &mut Self {
        self.op(op::MARK);
        for &v in vs {
            self.int(v);
        }
        self.op(op::TUPLE)
    }
    /// Memo 0 := `torch._utils._rebuild_tensor_v2`, memo 1 := `collections.OrderedDict`, as
    /// [`Pickle::tensor`] expects; leaves the stack empty.
    pub fn rebuild_globals(&mut self) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .put(0)
            .op(op::POP);
        self.global("collections", "OrderedDict").put(1).op(op::POP)
    }
    /// Pushes `OrderedDict()` (memo 1 must hold `OrderedDict`).
    pub fn ordered_dict(&mut self) -> &mut Self {
        self.get(1).op(op::EMPTY_TUPLE).op(op::REDUCE)
    }
    /// `_rebuild_tensor_v2(<storage pid>, offset, size, stride, False, OrderedDict())`.
    /// Memo 0 must hold `_rebuild_tensor_v2`, memo 1 `OrderedDict`.
    pub fn tensor(
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
        self.ordered_dict().op(op::TUPLE).op(op::REDUCE)
    }
    pub fn stop(&mut self) -> Vec<u8> {
        self.0.push(op::STOP);
        std::mem::take(&mut self.0)
    }
}

/// The magic-number, protocol-version and sys_info pickles that open every legacy file.
pub fn header() -> Vec<u8> {
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

/// The pickled list of storage keys that follows the main pickle.
pub fn storage_keys(keys: &[&str]) -> Vec<u8> {
    let mut p = Pickle::default();
    p.proto2().op(op::EMPTY_LIST).op(op::MARK);
    for k in keys {
        p.str(k);
    }
    p.op(op::APPENDS).stop()
}

/// One raw storage section: `i64` element count, then the little-endian elements.
pub fn storage_data<T: Copy>(values: &[T], to_le: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    let mut out = (values.len() as i64).to_le_bytes().to_vec();
    values.iter().for_each(|&v| out.extend(to_le(v)));
    out
}

/// A complete checkpoint whose state dict is `OrderedDict(name -> one tensor)`, with the
/// given storage `(class, key, numel)` holding `data` (already in storage_data form).
pub fn single_tensor(
    name: &str,
    storage: (&str, &str, i32),
    offset: i32,
    size: &[i32],
    stride: &[i32],
    data: Vec<u8>,
) -> Vec<u8> {
    let mut out = header();
    let mut p = Pickle::default();
    p.proto2().rebuild_globals().ordered_dict().op(op::MARK);
    p.str(name).tensor(storage, offset, size, stride);
    out.extend(p.op(op::SETITEMS).stop());
    out.extend(storage_keys(&[storage.1]));
    out.extend(data);
    out
}

/// OrderedDict with a [2,3] f32 tensor, its transpose, an offset slice of the same
/// storage, an int (to be skipped) and an i64 tensor from a second storage.
pub fn fixture() -> Vec<u8> {
    let mut out = header();
    let f32s = ("FloatStorage", "0", 6);
    let mut p = Pickle::default();
    p.proto2()
        .rebuild_globals()
        .ordered_dict()
        .put(2)
        .op(op::MARK);
    p.str("w").tensor(f32s, 0, &[2, 3], &[3, 1]);
    p.str("w_t").tensor(f32s, 0, &[3, 2], &[1, 3]);
    p.str("tail").tensor(f32s, 2, &[2, 2], &[1, 2]);
    p.str("num_batches").int(7);
    p.str("idx").tensor(("LongStorage", "1", 3), 0, &[3], &[1]);
    p.op(op::SETITEMS);
    // state_dict._metadata, as torch writes it.
    p.op(op::EMPTY_DICT).str("_metadata").ordered_dict();
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

pub fn f32_le(v: f32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
