"""Writes a legacy (non-zip) torch.save checkpoint plus the expected tensor values.

usage: gen_legacy.py {torch|emulate} OUT.pth OUT.expected

`torch` uses real PyTorch (torch.save(..., _use_new_zipfile_serialization=False)).
`emulate` needs only the standard library: it registers stand-in `torch` modules and drives
CPython's pickler with the same persistent ids and reduce tuples as torch's `_legacy_save`,
so the bytes match what PyTorch would write for the same state dict.

Expected file: one line per tensor, tab-separated: key, dtype, comma-separated dims,
comma-separated values (row-major, as float repr).
"""
import collections
import math
import pickle
import struct
import sys

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def cases():
    """(key, dtype, storage values, storage_offset, size, stride, storage id) tuples."""
    base = [float(i) - 5.5 for i in range(24)]
    ints = [-3, 0, 7, 1 << 40, -(1 << 33), 12]
    out = [
        ("conv.weight", "f32", base, 0, (2, 3, 4), (12, 4, 1), "a"),
        ("conv.weight_t", "f32", base, 0, (4, 3, 2), (1, 4, 12), "a"),
        ("conv.slice", "f32", base, 5, (3, 2), (2, 7), "a"),
        ("conv.bcast", "f32", base, 1, (2, 3), (0, 1), "a"),
        ("scalar", "f32", [2.5], 0, (), (), "s"),
        ("empty", "f32", [], 0, (0, 3), (3, 1), "e"),
        ("f64", "f64", [math.pi, -1e300, 0.25], 0, (3,), (1,), "d"),
        ("f16", "f16", [1.0, -2.5, 65504.0, 0.0009765625], 0, (2, 2), (1, 2), "h"),
        ("bf16", "bf16", [1.0, -3.0, 256.0, 0.5], 1, (3,), (1,), "b"),
        ("i64", "i64", ints, 0, (2, 3), (3, 1), "l"),
        ("i32", "i32", [-(2**31), 5, 2**31 - 1], 0, (3,), (1,), "i"),
        ("i16", "i16", [-32768, 1, 32767], 0, (3,), (1,), "s16"),
        ("i8", "i8", [-128, -1, 127], 0, (3,), (1,), "c"),
        ("u8", "u8", [0, 200, 255], 0, (3,), (1,), "u"),
        ("bool", "bool", [1, 0, 1], 0, (3,), (1,), "q"),
    ]
    # Enough tensors to push the memo past 256 entries (LONG_BINPUT / LONG_BINGET).
    for i in range(150):
        out.append((f"many.{i}.bias", "f32", [i, -i], 0, (2,), (1,), f"m{i}"))
    return out


def logical_values(vals, offset, size, stride):
    out = []

    def rec(dim, pos):
        if dim == len(size):
            out.append(vals[pos])
            return
        for i in range(size[dim]):
            rec(dim + 1, pos + i * stride[dim])

    if all(s > 0 for s in size):
        rec(0, offset)
    return out


def write_expected(path, rows):
    with open(path, "w") as f:
        for key, dtype, size, values in rows:
            dims = ",".join(str(d) for d in size)
            f.write(f"{key}\t{dtype}\t{dims}\t{','.join(repr(float(v)) for v in values)}\n")


def run_torch(pth, expected):
    import torch

    dtypes = {
        "f32": torch.float32, "f64": torch.float64, "f16": torch.float16,
        "bf16": torch.bfloat16, "i64": torch.int64, "i32": torch.int32,
        "i16": torch.int16, "i8": torch.int8, "u8": torch.uint8, "bool": torch.bool,
    }
    storages = {}
    sd = collections.OrderedDict()
    for key, dtype, vals, offset, size, stride, sid in cases():
        if sid not in storages:
            storages[sid] = torch.tensor(vals, dtype=dtypes[dtype])
        sd[key] = storages[sid].as_strided(size, stride, offset)
    sd["num_batches_tracked"] = 3  # non-tensor entry, must be skipped
    sd["param"] = torch.nn.Parameter(torch.tensor([[1.5, -2.0]]))  # via _rebuild_parameter
    torch.save(sd, pth, _use_new_zipfile_serialization=False)
    rows = [(k, d, tuple(sd[k].shape), sd[k].detach().flatten().double().tolist())
            for k, d in [(c[0], c[1]) for c in cases()] + [("param", "f32")]]
    write_expected(expected, rows)


FORMATS = {"f32": "f", "f64": "d", "f16": "e", "i64": "q", "i32": "i", "i16": "h",
           "i8": "b", "u8": "B", "bool": "?"}
CLASSES = {"f32": "FloatStorage", "f64": "DoubleStorage", "f16": "HalfStorage",
           "bf16": "BFloat16Storage", "i64": "LongStorage", "i32": "IntStorage",
           "i16": "ShortStorage", "i8": "CharStorage", "u8": "ByteStorage", "bool": "BoolStorage"}


def run_emulate(pth, expected):
    import types

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    for name in CLASSES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called when writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class Storage:
        def __init__(self, dtype, vals):
            self.dtype, self.vals = dtype, vals

        def raw(self):
            if self.dtype == "bf16":
                return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:]
                                for v in self.vals)
            return struct.pack("<" + FORMATS[self.dtype] * len(self.vals), *self.vals)

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride)

        def __reduce_ex__(self, proto):
            return (_rebuild_tensor_v2, self.args + (False, collections.OrderedDict()))

    storages, keys = {}, {}
    sd = collections.OrderedDict()
    rows = []
    for key, dtype, vals, offset, size, stride, sid in cases():
        if sid not in storages:
            storages[sid] = Storage(dtype, vals)
        sd[key] = Tensor(storages[sid], offset, size, stride)
        values = logical_values(vals, offset, size, stride)
        if dtype == "bool":
            values = [float(bool(v)) for v in values]
        rows.append((key, dtype, size, values))
    sd["num_batches_tracked"] = 3
    sd._metadata = collections.OrderedDict([("", {"version": 1})])

    def persistent_id(obj):
        if isinstance(obj, Storage):
            key = keys.setdefault(id(obj), str(len(keys)))
            cls = getattr(torch, CLASSES[obj.dtype])
            return ("storage", cls, key, "cpu", len(obj.vals), None)
        return None

    by_key = {}
    with open(pth, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION,
                       dict(protocol_version=PROTOCOL_VERSION, little_endian=True,
                            type_sizes=dict(short=2, int=4, long=4))):
            pickle.dump(header, f, protocol=2)
        pickler = pickle.Pickler(f, protocol=2)
        pickler.persistent_id = persistent_id
        pickler.dump(sd)
        for s in storages.values():
            by_key[keys[id(s)]] = s
        sorted_keys = sorted(by_key)
        pickle.dump(sorted_keys, f, protocol=2)
        for k in sorted_keys:
            s = by_key[k]
            f.write(struct.pack("<q", len(s.vals)))
            f.write(s.raw())
    write_expected(expected, rows)


if __name__ == "__main__":
    mode, pth, expected = sys.argv[1:]
    {"torch": run_torch, "emulate": run_emulate}[mode](pth, expected)
