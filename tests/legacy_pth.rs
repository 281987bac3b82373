//! Checks `read_legacy_pth` against checkpoints written by Python: CPython's pickler emulating
//! `torch.save`'s legacy format, and the real EfficientNet-Lite0 file (both fail under CI when
//! python3 or the weights are missing). The checks that need PyTorch itself are `#[ignore]`d
//! (CI installs no PyTorch; the hand-assembled fixtures of `legacy_pth_vm.rs` cover the format
//! there): `cargo test --release --test legacy_pth -- --ignored` with a Python that has torch
//! (`$LEGACY_PTH_TORCH_PYTHON`, `.venv/bin/python` or `python3`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Tensor};
use transfer_workbook::checkpoint::legacy_pth::{is_legacy_pth, read_legacy_pth};

type R = Result<(), Box<dyn std::error::Error>>;

const GENERATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/gen_legacy.py");
const EFFICIENTNET_DEFAULT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/weights/efficientnet-lite0-57934424.pth");

fn python_works(python: &Path, import: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {import}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Python interpreter with PyTorch: `$LEGACY_PTH_TORCH_PYTHON`, the project venv, or python3.
/// Only the `#[ignore]`d tests ask, so a missing one is a failure, not a skip.
fn torch_python() -> PathBuf {
    let candidates = [
        std::env::var_os("LEGACY_PTH_TORCH_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"))),
        Some(PathBuf::from("python3")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| python_works(p, "torch"))
        .expect("no Python with torch: python3 -m venv .venv && .venv/bin/pip install torch (or set LEGACY_PTH_TORCH_PYTHON)")
}

fn generate(python: &Path, mode: &str, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (pth, expected) = (
        dir.join(format!("{mode}.pth")),
        dir.join(format!("{mode}.txt")),
    );
    let out = Command::new(python)
        .arg(GENERATOR)
        .args([mode.as_ref(), pth.as_os_str(), expected.as_os_str()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok((pth, expected))
}

/// Compares every tensor with the generator's expected-values file.
fn check_against_expected(pth: &Path, expected: &Path) -> R {
    assert!(is_legacy_pth(pth));
    let tensors = read_legacy_pth(pth)?;
    let expected = std::fs::read_to_string(expected)?;
    let lines: Vec<&str> = expected.lines().collect();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let expected_names: Vec<&str> = lines.iter().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(
        names, expected_names,
        "keys, in file order, without non-tensor entries"
    );

    for ((name, tensor), line) in tensors.iter().zip(&lines) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [_, dtype, dims, values] = fields[..] else {
            panic!("bad expected line {line:?}");
        };
        let want_dtype = match dtype {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "i64" => DType::I64,
            "i32" => DType::I32,
            "i16" | "i8" => DType::I16,
            "u8" | "bool" => DType::U8,
            other => panic!("unknown dtype {other}"),
        };
        assert_eq!(tensor.dtype(), want_dtype, "{name}");
        let dims: Vec<usize> = dims
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.parse().unwrap())
            .collect();
        assert_eq!(tensor.dims(), dims.as_slice(), "{name}");
        let want: Vec<f64> = values
            .split(',')
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().unwrap())
            .collect();
        let got = if dtype == "i64" {
            // Exact: values beyond 2^53 would be rounded by an f64 round-trip.
            let got = tensor.flatten_all()?.to_vec1::<i64>()?;
            assert_eq!(
                got,
                want.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                "{name}"
            );
            continue;
        } else {
            tensor
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?
        };
        assert_eq!(got, want, "{name}");
    }
    println!("{}: {} tensors match", pth.display(), tensors.len());
    Ok(())
}

#[test]
fn cpython_pickler_emulating_torch_legacy_save() -> R {
    let python = PathBuf::from("python3");
    if !support::available("python3", python_works(&python, "pickle"), "apt-get install python3") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (pth, expected) = generate(&python, "emulate", dir.path())?;
    check_against_expected(&pth, &expected)
}

#[test]
#[ignore = "needs PyTorch (python3 -m venv .venv && .venv/bin/pip install torch)"]
fn pytorch_written_legacy_checkpoint() -> R {
    let python = torch_python();
    let dir = tempfile::tempdir()?;
    let (pth, expected) = generate(&python, "torch", dir.path())?;
    check_against_expected(&pth, &expected)
}

fn sum_f64(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()
}

/// `$EFFICIENTNET_LITE0_PTH`, or the file `tools/fetch-weights.sh` fetches.
fn lite0_path() -> Option<PathBuf> {
    let path = std::env::var_os("EFFICIENTNET_LITE0_PTH").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(EFFICIENTNET_DEFAULT));
    support::available(&format!("the EfficientNet-Lite0 weights {}", path.display()), path.is_file(), "bash tools/fetch-weights.sh").then_some(path)
}

#[test]
fn efficientnet_lite0_checkpoint() -> R {
    let Some(path) = lite0_path() else { return Ok(()) };
    assert!(
        is_legacy_pth(&path),
        "{} is not a legacy checkpoint",
        path.display()
    );
    let tensors = read_legacy_pth(&path)?;
    println!("{}: {} tensors", path.display(), tensors.len());
    let get = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
    let stem = get("_conv_stem.weight").ok_or("missing _conv_stem.weight")?;
    assert_eq!(stem.dims(), [32, 3, 3, 3]);
    let fc = get("_fc.weight").ok_or("missing _fc.weight")?;
    assert_eq!(fc.dims(), [1000, 1280]);
    // Weights are f32; BatchNorm's `num_batches_tracked` counters are int64 in PyTorch.
    for (name, t) in &tensors {
        let want = if name.ends_with(".num_batches_tracked") {
            DType::I64
        } else {
            DType::F32
        };
        assert_eq!(t.dtype(), want, "{name}");
    }
    Ok(())
}

/// Every tensor's sum against `torch.load` of the same file.
#[test]
#[ignore = "needs PyTorch (python3 -m venv .venv && .venv/bin/pip install torch)"]
fn efficientnet_lite0_tensor_sums_match_torch_load() -> R {
    let path = lite0_path().ok_or("the EfficientNet-Lite0 weights are missing: bash tools/fetch-weights.sh")?;
    let tensors = read_legacy_pth(&path)?;
    let get = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
    let python = torch_python();
    let picks: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let script = format!(
        "import sys, torch\nsd = torch.load(sys.argv[1], map_location='cpu', weights_only=False)\n\
         sd = sd.get('state_dict', sd.get('model', sd)) if not any(torch.is_tensor(v) for v in sd.values()) else sd\n\
         print(len([v for v in sd.values() if torch.is_tensor(v)]))\n\
         for k in {picks:?}: print(k, sd[k].double().sum().item())"
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .arg(&path)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let mut lines = stdout.lines();
    let count: usize = lines.next().ok_or("no output")?.trim().parse()?;
    assert_eq!(count, tensors.len(), "tensor count vs torch.load");
    for line in lines {
        let (name, want) = line.rsplit_once(' ').ok_or("bad line")?;
        let want: f64 = want.parse()?;
        let got = sum_f64(get(name).ok_or(format!("missing {name}"))?)?;
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{name}: {got} vs torch {want}"
        );
    }
    println!("all {count} tensor sums match torch.load");
    Ok(())
}

#[test]
#[ignore = "needs PyTorch (python3 -m venv .venv && .venv/bin/pip install torch)"]
fn pytorch_zip_checkpoint_is_not_legacy() -> R {
    let python = torch_python();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("zip.pth");
    let script = "import sys, torch; torch.save({'a': torch.ones(2)}, sys.argv[1])";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_legacy_pth(&path));
    let err = read_legacy_pth(&path).expect_err("zip is not legacy");
    assert!(
        matches!(err, transfer_workbook::checkpoint::legacy_pth::LegacyPthError::NotLegacy(_)),
        "{err}"
    );
    Ok(())
}
