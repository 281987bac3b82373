//! The legacy `.pth` reader on hand-assembled pickles, through the public API only: tensor
//! layouts (views, offsets, strides, dtypes), and hostile input (foreign globals, truncation,
//! corruption, deep nesting, cycles, huge broadcasts) that must fail cleanly, never panic, and
//! name the byte offset or tensor at fault. Needs no Python; `legacy_pth.rs` checks files
//! written by Python.

#[path = "support/pickles.rs"]
mod pickles;

use candle_core::{DType, Tensor};
use pickles::{f32_le, fixture, header, op, single_tensor, storage_data, storage_keys, Pickle};
use transfer_workbook::checkpoint::legacy_pth::{
    is_legacy_pth, read_legacy_pth, read_legacy_pth_bytes, LegacyPthError,
};

type R = std::result::Result<(), Box<dyn std::error::Error>>;

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
    p.proto2().rebuild_globals();
    p.op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("epoch")
        .int(3)
        .str("state_dict");
    p.ordered_dict().op(op::MARK);
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
    let at = out.len() + 2; // just past PROTO 2
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
        matches!(&err, LegacyPthError::ForbiddenGlobal { module, name, offset }
            if module == "os" && name == "system" && *offset == at),
        "{msg}"
    );
    assert!(
        msg.contains("os.system") && msg.contains(&format!("byte offset {at}")),
        "{msg}"
    );
}

#[test]
fn foreign_global_inside_state_dict_is_refused() {
    // posix.system among real tensors: refused where it appears, not skipped as a non-tensor.
    let mut out = header();
    let mut p = Pickle::default();
    p.proto2().rebuild_globals().ordered_dict().op(op::MARK);
    p.str("w").tensor(("FloatStorage", "0", 1), 0, &[1], &[1]);
    let at = p.len();
    p.global("posix", "system")
        .str("id")
        .op(op::TUPLE1)
        .op(op::REDUCE);
    out.extend(p.op(op::SETITEMS).stop());
    let at = header().len() + at;
    out.extend(storage_keys(&["0"]));
    out.extend(storage_data(&[1f32], f32_le));
    let err = read_legacy_pth_bytes(&out).expect_err("posix.system must be refused");
    assert!(
        err.to_string().starts_with(&format!(
            "pickle global posix.system at byte offset {at} is not allowed"
        )),
        "{err}"
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
    let data = storage_data(&[1f32, 2.], f32_le);
    let out = single_tensor("bad", ("FloatStorage", "0", 2), 1, &[2], &[1], data);
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
    p.proto2().rebuild_globals();
    p.ordered_dict().str("t").get(0).op(op::MARK);
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
fn memo_references_do_not_copy() {
    // [] then 64 rounds of (m, m) via the memo: 2^64 leaves if references were copies.
    let mut out = header();
    let mut p = Pickle::default();
    p.proto2().op(op::EMPTY_LIST).put(0);
    for _ in 0..64 {
        p.get(0).get(0).op(op::TUPLE2).put(0);
    }
    out.extend(p.stop());
    out.extend(storage_keys(&[]));
    let err = read_legacy_pth_bytes(&out).expect_err("a tuple is not a state dict");
    assert!(
        err.to_string().contains("top-level object is a tuple"),
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
    let huge = 1 << 20; // 2^60 elements: no overflow, but no allocator will oblige
    let data = storage_data(&[1f32], f32_le);
    let out = single_tensor(
        "big",
        ("FloatStorage", "0", 1),
        0,
        &[huge, huge, huge],
        &[0, 0, 0],
        data,
    );
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
