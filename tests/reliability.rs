//! Nothing lost, nothing silent (issue 16): crash-safe checkpoints (a kill at every write step,
//! then `--resume`, equals the uninterrupted run bit for bit), locked and guarded output
//! folders, every bad number refused up front, truncated images and bad weight files refused
//! naming the file or tensor, zip `.pth` files with non-contiguous storages.

mod support;
#[path = "support/pickles.rs"]
#[allow(dead_code)]
mod pickles;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn finetune(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_finetune"));
    c.args(args).env("RUST_BACKTRACE", "0").env_remove("TRANSFER_WORKBOOK_FAULT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every tensor of a safetensors file as raw bytes, by name (the metadata order may vary).
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(k, v)| (k, v.data().to_vec())).collect()
}

/// history.json without the timing fields (they differ between any two runs).
fn history(out: &Path) -> Vec<serde_json::Value> {
    let h: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("history.json")).unwrap()).unwrap();
    h.into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("examples_per_sec");
            o.remove("train_seconds");
            r
        })
        .collect()
}

fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["scratch", "--data", data, "--out", out, "--image-size", "32", "--batch-size", "4", "--quiet"];
    a.extend_from_slice(extra);
    a
}

/// A colour data set with `per_class` photos per class and a finished run on it (`extra` flags)
/// in a fresh output folder: (data, out).
fn finished_run(per_class: usize, extra: &[&str]) -> (tempfile::TempDir, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), per_class, 1);
    let out = tempfile::tempdir().unwrap();
    let o = finetune(&train_args(s(data.path()), s(out.path()), extra), &[]);
    assert!(o.status.success(), "{}", text(&o));
    (data, out)
}

/// The checkpoint folder holds exactly one generation's files and no temporary file.
fn assert_clean_checkpoint(out: &Path) {
    let names: Vec<String> = std::fs::read_dir(out.join("checkpoint")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "leftover temporary file: {names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("model-")).count(), 1, "{names:?}");
}

#[test]
fn a_kill_at_every_checkpoint_write_step_then_resume_equals_the_uninterrupted_run() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 4, 2);
    let d = s(data.path());
    // Momentum and early stopping: the checkpoint has all its parts (model, optimizer, best).
    let extra = ["--epochs", "2", "--momentum", "0.9", "--patience", "3", "--val-split", "0.5", "--lr", "0.01"];
    let base = tempfile::tempdir().unwrap();
    let o = finetune(&train_args(d, s(base.path()), &extra), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let want_model = tensors(&base.path().join("model.safetensors"));
    let want_history = history(base.path());
    assert_eq!(want_history.len(), 2);
    // Each checkpoint step is hit once per epoch: kill in the second (last) epoch; `history` is the
    // end of the run (final history written, final model not yet).
    for step in ["model@2", "optimizer@2", "best@2", "state-temp@2", "state@2", "history"] {
        let out = tempfile::tempdir().unwrap();
        let o = finetune(&train_args(d, s(out.path()), &extra), &[("TRANSFER_WORKBOOK_FAULT", step)]);
        assert!(!o.status.success(), "{step}: the run should have been killed:\n{}", text(&o));
        assert!(text(&o).contains("aborting at write step"), "{step}: {}", text(&o));
        let o = finetune(&train_args(d, s(out.path()), &[&extra[..], &["--resume"]].concat()), &[]);
        let t = text(&o);
        assert!(o.status.success(), "{step}: resume failed:\n{t}");
        // The killed run's lock is stale: taken over with a warning.
        assert!(t.contains("no longer running"), "{step}: {t}");
        assert_eq!(tensors(&out.path().join("model.safetensors")), want_model, "{step}: resumed weights differ");
        assert_eq!(history(out.path()), want_history, "{step}: resumed history differs");
        assert_clean_checkpoint(out.path());
        assert!(!out.path().join("finetune.lock").exists(), "{step}: lock left behind");
    }
}

#[test]
fn default_sgd_without_momentum_resumes_exactly() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 4, 2);
    let d = s(data.path());
    let (whole, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let o = finetune(&train_args(d, s(whole.path()), &["--epochs", "2"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = finetune(&train_args(d, s(split.path()), &["--epochs", "1"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = finetune(&train_args(d, s(split.path()), &["--epochs", "2", "--resume"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("after epoch 1"), "{}", text(&o));
    assert_eq!(tensors(&split.path().join("model.safetensors")), tensors(&whole.path().join("model.safetensors")));
    assert_eq!(history(split.path()), history(whole.path()));
}

#[test]
fn an_output_folder_in_use_fails_fast_naming_the_holder() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 2, 1);
    let out = tempfile::tempdir().unwrap();
    // A live holder: this test process.
    std::fs::write(out.path().join("finetune.lock"), format!("{}\n", std::process::id())).unwrap();
    let o = finetune(&train_args(s(data.path()), s(out.path()), &["--epochs", "1"]), &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("in use by another run") && t.contains(&format!("pid {}", std::process::id())), "{t}");
    assert!(!out.path().join("history.json").exists());
}

#[test]
fn a_finished_run_is_kept_unless_resume_or_overwrite() {
    let (data, out) = finished_run(2, &["--epochs", "1"]);
    let d = s(data.path());
    let model = tensors(&out.path().join("model.safetensors"));
    for extra in [&["--epochs", "1"][..], &["--epochs", "2", "--seed", "3"]] {
        let o = finetune(&train_args(d, s(out.path()), extra), &[]);
        let t = text(&o);
        assert!(!o.status.success() && t.contains("holds a finished run") && t.contains("--overwrite"), "{extra:?}: {t}");
        assert_eq!(tensors(&out.path().join("model.safetensors")), model, "{extra:?} replaced the model");
    }
    // --overwrite with a data folder that fails to load: the old run is still there.
    let broken = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(broken.path().join("train/red")).unwrap();
    std::fs::create_dir_all(broken.path().join("train/blue")).unwrap();
    let o = finetune(&train_args(s(broken.path()), s(out.path()), &["--epochs", "1", "--overwrite"]), &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(tensors(&out.path().join("model.safetensors")), model, "a failed --overwrite removed the old model");
    let o = finetune(&train_args(d, s(out.path()), &["--epochs", "1", "--seed", "3", "--overwrite"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(tensors(&out.path().join("model.safetensors")), model, "--overwrite kept the old model");
    assert_clean_checkpoint(out.path());
}

/// `--resume` continues the same run: other photos (a changed `--val-split`, `--seed` or
/// `--limit-per-class` would move held-out photos into training), another batch size or
/// another schedule are refused; more epochs of a constant schedule are fine.
#[test]
fn resume_refuses_other_data_batch_or_schedule() {
    let (data, out) = finished_run(6, &["--epochs", "1", "--val-split", "0.5"]);
    let d = s(data.path());
    for (extra, what) in [
        (&["--epochs", "2", "--val-split", "0.34", "--resume"][..], "validation photos"),
        (&["--epochs", "2", "--val-split", "0.5", "--seed", "1", "--resume"], "validation photos"),
        (&["--epochs", "2", "--val-split", "0.5", "--limit-per-class", "4", "--resume"], "validation photos"),
        (&["--epochs", "2", "--val-split", "0.5", "--schedule", "cosine", "--resume"], "the schedule"),
    ] {
        let o = finetune(&train_args(d, s(out.path()), extra), &[]);
        let t = text(&o);
        assert!(!o.status.success() && t.contains("--resume: ") && t.contains(what), "{extra:?}: {t}");
    }
    let other_batch = ["scratch", "--data", d, "--out", s(out.path()), "--image-size", "32", "--batch-size", "2", "--quiet", "--epochs", "2", "--val-split", "0.5", "--resume"];
    let o = finetune(&other_batch, &[]);
    assert!(!o.status.success() && text(&o).contains("--batch-size was 4, now 2"), "{}", text(&o));
    let o = finetune(&train_args(d, s(out.path()), &["--epochs", "2", "--val-split", "0.5", "--resume"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(history(out.path()).len(), 2);
}

#[test]
fn every_bad_number_is_refused_before_loading_anything() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 2, 1);
    let d = s(data.path());
    let out = tempfile::tempdir().unwrap();
    let o = s(out.path());
    let img = data.path().join("test/red/0.png");
    let i = s(&img);
    let w = "no-such-weights.pth"; // never opened: the numbers are checked first
    // Refused as clap reads the flag: a usage error, exit code 2, worded by the check.
    let flag_values: Vec<(Vec<&str>, &str)> = vec![
        (train_args(d, o, &["--lr=-1"]), "--lr must be a finite number above 0 (got -1)"),
        (train_args(d, o, &["--lr", "0"]), "--lr must be a finite number above 0 (got 0)"),
        (train_args(d, o, &["--lr", "NaN"]), "--lr must be a finite number above 0 (got NaN)"),
        (train_args(d, o, &["--lr", "inf"]), "--lr must be a finite number above 0 (got inf)"),
        (train_args(d, o, &["--head-lr-mult", "0"]), "--head-lr-mult must be a finite number above 0"),
        (train_args(d, o, &["--momentum=-5"]), "--momentum must be at least 0 and below 1 (got -5)"),
        (train_args(d, o, &["--momentum", "1.5"]), "--momentum must be at least 0 and below 1"),
        (train_args(d, o, &["--weight-decay=-1"]), "--weight-decay must be a finite number, 0 or above"),
        (train_args(d, o, &["--epochs", "0"]), "--epochs must be at least 1"),
        (train_args(d, o, &["--limit-per-class", "0"]), "--limit-per-class must be at least 1"),
        (train_args(d, o, &["--patience", "0"]), "--patience must be at least 1"),
        (vec!["scratch", "--data", d, "--out", o, "--batch-size", "0"], "--batch-size must be at least 1"),
        (vec!["scratch", "--data", d, "--out", o, "--image-size", "0"], "--image-size must be at least 32 pixels (got 0)"),
        (vec!["two-phase", "--data", d, "--out", o, "--head-lr", "0"], "--head-lr must be a finite number above 0"),
        (vec!["predict", i, "--backbone", "resnet18", "--weights", w, "--image-size", "0"], "--image-size must be at least 32"),
        (vec!["predict", i, "--backbone", "resnet18", "--weights", w, "--top-k", "0"], "--top-k must be at least 1"),
        (vec!["zero-shot", "--data", d, "--weights", w, "--image-size", "0"], "--image-size must be at least 32"),
        (vec!["zero-shot", "--data", d, "--weights", w, "--batch-size", "0"], "--batch-size must be at least 1"),
        (vec!["bench", "--image-size", "0"], "--image-size must be at least 32"),
        (vec!["bench", "--batch-size", "0"], "--batch-size must be at least 1"),
        // Above 0 in f64, 0 or infinite in the float32 of training (1e-50 trained nothing).
        (train_args(d, o, &["--lr", "1e-50"]), "--lr 1e-50 is 0 (or a denormal) in float32"),
        (train_args(d, o, &["--head-lr-mult", "1e-50"]), "--head-lr-mult 1e-50 is 0 (or a denormal) in float32"),
        (train_args(d, o, &["--lr", "1e39"]), "--lr 1e39 is infinite in float32"),
        (vec!["two-phase", "--data", d, "--out", o, "--fine-lr", "1e-50"], "--fine-lr 1e-50 is 0"),
        (vec!["lr-find", "--data", d, "--out", o, "--start-lr", "1e-60"], "--start-lr 1e-60 is 0"),
    ];
    // Refused by what the flags mean together (memory, a product, a flag that would not apply): exit code 1.
    let combinations: Vec<(Vec<&str>, &str)> = vec![
        (vec!["scratch", "--data", d, "--out", o, "--image-size", "100000", "--batch-size", "1"], "needs at least"),
        (vec!["two-phase", "--data", d, "--out", o, "--head-epochs", "0", "--fine-epochs", "0"], "must be at least 1"),
        (vec!["predict", i, "--backbone", "resnet18", "--weights", w, "--image-size", "100000"], "lower --batch-size or --image-size"),
        (vec!["zero-shot", "--data", d, "--weights", w, "--image-size", "100000"], "needs at least"),
        (vec!["bench", "--image-size", "100000", "--batch-size", "1"], "needs at least"),
        (train_args(d, o, &["--lr", "1e-20", "--head-lr-mult", "1e-20"]), "the head's learning rate (--lr x --head-lr-mult) 1e-40 is 0"),
        // Flags that would be ignored without a word.
        (train_args(d, o, &["--weights", w]), "scratch trains from random weights: --weights no-such-weights.pth does not apply"),
        (train_args(d, o, &["--positive-class", "red"]), "--positive-class red applies only with --head-init hotdog"),
        (vec!["bench", "--steps", "0"], "--steps 0 times no training step"),
    ];
    let cases = flag_values.into_iter().map(|c| (c, 2)).chain(combinations.into_iter().map(|c| (c, 1)));
    for ((args, want), code) in cases {
        let r = finetune(&args, &[]);
        let t = text(&r);
        assert_eq!(r.status.code(), Some(code), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: expected '{want}' in:\n{t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
        assert!(!out.path().join("history.json").exists(), "{args:?} trained");
    }
}

#[test]
fn a_one_class_data_set_is_an_error() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 2, 1);
    for split in ["train", "test"] {
        std::fs::remove_dir_all(data.path().join(split).join("blue")).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let o = finetune(&train_args(s(data.path()), s(out.path()), &["--epochs", "1"]), &[]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("has 1 class folder") && t.contains("at least 2"), "{t}");
}

/// A real baseline JPEG (the `image` crate's encoder) of a noisy photo-sized picture.
fn jpeg_bytes() -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([(x * 7 % 251) as u8, (y * 13 % 241) as u8, ((x * y) % 239) as u8]));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
    buf.into_inner()
}

#[test]
fn truncated_jpegs_are_detected_where_the_decoder_returns_grey() {
    use transfer_workbook::data::decode::check_jpeg_complete;
    let full = jpeg_bytes();
    assert!(full.len() > 8000, "{}", full.len());
    check_jpeg_complete(&full).unwrap();
    // The decoder alone accepts the first 2 KB (this is what the check is for).
    assert!(image::load_from_memory(&full[..2048]).is_ok(), "the image crate now refuses truncated JPEGs: the check may go");
    for cut in [2048, full.len() / 2, full.len() - 2] {
        let e = check_jpeg_complete(&full[..cut]).unwrap_err();
        assert!(e.contains("truncated JPEG"), "{cut}: {e}");
    }
    // Bytes after EOI (some cameras append data) are fine; an EOI inside an APP1 segment
    // (an EXIF thumbnail's) is skipped by the segment length, not taken as the end.
    let mut trailing = full.clone();
    trailing.extend_from_slice(b"trailer");
    check_jpeg_complete(&trailing).unwrap();
    let mut app1 = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
    app1.extend_from_slice(&full[2..2048]);
    assert!(check_jpeg_complete(&app1).is_err());
}

/// A JPEG cut short with an EOI marker appended passes the structural walk and `image`'s
/// decoder (which makes up the missing rows from zero bits); the decode refuses it.
#[test]
fn a_jpeg_cut_short_with_its_end_marker_appended_is_refused() {
    use transfer_workbook::data::decode::{check_jpeg_complete, decode_bytes, DecodeLimits};
    let full = jpeg_bytes();
    assert!(decode_bytes(&full, DecodeLimits::default()).is_ok());
    for cut in [full.len() / 2, full.len() / 4, full.len() * 9 / 10] {
        let mut spliced = full[..cut].to_vec();
        spliced.extend_from_slice(&[0xFF, 0xD9]);
        check_jpeg_complete(&spliced).unwrap();
        // `image` alone decodes it, the rows it has no data for made up.
        image::load_from_memory(&spliced).expect("the image crate now refuses it: the strict decode may go");
        let e = decode_bytes(&spliced, DecodeLimits::default()).unwrap_err().to_string();
        assert!(e.contains("truncated or corrupt JPEG") && e.contains("ends or breaks before its last row"), "{cut}: {e}");
    }
}

/// Strict decoding changes what is refused, never a pixel: on every real photo of both shared
/// sets (2,498 JPEGs) it gives exactly `image`'s own decode, and refuses the photo cut at 60%
/// with an EOI appended.
#[test]
fn the_strict_jpeg_decode_equals_the_image_crates_on_every_real_photo() {
    use rayon::prelude::*;
    use transfer_workbook::data::decode::{decode_bytes, decode_jpeg, DecodeLimits};
    let Some(hotdog) = support::hotdog_photos() else { return };
    let Some(flowers) = support::flower_photos() else { return };
    let mut files = Vec::new();
    for root in [hotdog, flowers] {
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")) {
                    files.push(p);
                }
            }
        }
    }
    assert!(files.len() >= 2498, "{} photos", files.len());
    let differ: Vec<String> = files
        .par_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).unwrap();
            // The strict path itself (not the lenient fallback) decodes it.
            let strict = decode_jpeg(&bytes);
            let ours = decode_bytes(&bytes, DecodeLimits::default()).map_err(|e| e.to_string());
            let theirs = image::load_from_memory(&bytes).map(|i| i.into_rgb8()).map_err(|e| e.to_string());
            // Cut at 60% with EOI appended: refused.
            let mut spliced = bytes[..bytes.len() * 3 / 5].to_vec();
            spliced.extend([0xFF, 0xD9]);
            let cut = decode_bytes(&spliced, DecodeLimits::default()).map(|_| ()).map_err(|e| e.to_string());
            match (strict, ours, theirs, cut) {
                (Ok(Some(s)), Ok(a), Ok(b), Err(e)) if s == b && a == b && e.starts_with("truncated") => None,
                (s, a, b, c) => Some(format!(
                    "{}: strict {:?}, ours {:?}, image's {:?}, cut {c:?}",
                    p.display(),
                    s.map(|o| o.map(|i| i.dimensions())),
                    a.map(|i| i.dimensions()),
                    b.map(|i| i.dimensions())
                )),
            }
        })
        .collect();
    assert!(differ.is_empty(), "{} of {} photos differ:\n{}", differ.len(), files.len(), differ.join("\n"));
}

#[test]
fn truncated_images_are_skipped_named_and_counted_and_the_limit_selects_before_decoding() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 3, 1);
    let full = jpeg_bytes();
    // Sorted before the PNGs ('0.png'...): within a limit of 2.
    std::fs::write(data.path().join("train/red/+cut.jpg"), &full[..2048]).unwrap();
    std::fs::write(data.path().join("train/red/+cut.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    // Sorted last: beyond the limit, never decoded, so never reported.
    std::fs::write(data.path().join("train/blue/zz-cut.jpg"), &full[..2048]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = finetune(&train_args(s(data.path()), s(out.path()), &["--epochs", "1", "--limit-per-class", "3"]), &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("+cut.jpg") && t.contains("truncated JPEG (2048 bytes"), "{t}");
    assert!(t.contains("+cut.png") && t.contains("2 files skipped"), "{t}");
    assert!(t.contains("images (blue 3, red 1)"), "{t}");
    assert!(!t.contains("zz-cut.jpg"), "decoded beyond --limit-per-class:\n{t}");
    // predict refuses it, naming the file.
    let cut = data.path().join("train/red/+cut.jpg");
    let o = finetune(&["predict", s(&cut), "--weights", s(&out.path().join("model.safetensors")), "--image-size", "32"], &[]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("+cut.jpg") && t.contains("truncated JPEG"), "{t}");
}

/// A zip `.pth` as `torch.save` writes it: `archive/data.pkl` and one record per storage.
fn zip_pth(path: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn zip_pth_with_non_contiguous_and_offset_tensors_loads_element_for_element() {
    use pickles::{op, Pickle};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noncontig.pth");
    // The real Lite0 stem weight's layout: shape [O, I, H, W] with strides (1, O, W*I*O, I*O)
    // (memory order H, W, I, O), here O=2, I=3, H=W=2, values 0..24 in memory.
    let storage = ("FloatStorage", "0", 30);
    // Candle's pickle reader has no POP: globals are pushed where used, no memo.
    let ordered_dict = |p: &mut Pickle| {
        p.global("collections", "OrderedDict").op(op::EMPTY_TUPLE).op(op::REDUCE);
    };
    let tensor = |p: &mut Pickle, offset: i32, size: &[i32], stride: &[i32]| {
        p.global("torch._utils", "_rebuild_tensor_v2").op(op::MARK).op(op::MARK).str("storage").global("torch", storage.0);
        p.str(storage.1).str("cpu").int(storage.2).op(op::TUPLE).op(op::BINPERSID);
        p.int(offset).ints(size).ints(stride).op(op::NEWFALSE);
        ordered_dict(p);
        p.op(op::TUPLE).op(op::REDUCE);
    };
    let mut p = Pickle::default();
    p.proto2();
    ordered_dict(&mut p);
    p.op(op::MARK).str("stem.weight");
    tensor(&mut p, 0, &[2, 3, 2, 2], &[1, 2, 12, 6]);
    // A slice of the same storage at an offset, transposed.
    p.str("tail");
    tensor(&mut p, 24, &[2, 3], &[1, 2]);
    p.op(op::SETITEMS);
    let data: Vec<u8> = (0..30).flat_map(|v| (v as f32).to_le_bytes()).collect();
    zip_pth(&path, &p.stop(), &[("0", data)]);
    let t = transfer_workbook::checkpoint::read_tensors(&path).unwrap();
    let w = t["stem.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(t["stem.weight"].dims(), &[2, 3, 2, 2]);
    let mut k = 0;
    for o in 0..2 {
        for i in 0..3 {
            for h in 0..2 {
                for x in 0..2 {
                    assert_eq!(w[k], (o + 2 * i + 12 * h + 6 * x) as f32, "[{o},{i},{h},{x}]");
                    k += 1;
                }
            }
        }
    }
    assert_eq!(t["tail"].to_vec2::<f32>().unwrap(), vec![vec![24., 26., 28.], vec![25., 27., 29.]]);
    // Cut in half: the error names the file.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", transfer_workbook::checkpoint::read_tensors(&cut).unwrap_err());
    assert!(e.contains("cut.pth") && e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn integer_and_nan_weights_are_refused_at_load_naming_the_tensor() {
    use candle_core::{Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let ok = Tensor::ones((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let cases = [
        ("int.safetensors", Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap(), "is I64, not floating point"),
        ("nan.safetensors", Tensor::new(&[1f32, f32::NAN, 3.], &Device::Cpu).unwrap(), "holds 1 NaN or infinite values"),
        ("inf.safetensors", Tensor::new(&[f32::INFINITY, 0.], &Device::Cpu).unwrap(), "holds 1 NaN or infinite values"),
    ];
    for (file, bad, want) in cases {
        let path = dir.path().join(file);
        let mut m = std::collections::HashMap::new();
        m.insert("features.0.weight".to_string(), bad);
        m.insert("fc.weight".to_string(), ok.clone());
        // num_batches_tracked counters are integers in every torchvision checkpoint: kept.
        m.insert("bn1.num_batches_tracked".to_string(), Tensor::new(&[7i64], &Device::Cpu).unwrap());
        candle_core::safetensors::save(&m, &path).unwrap();
        let e = format!("{:#}", transfer_workbook::checkpoint::read_tensors(&path).unwrap_err());
        assert!(e.contains(file) && e.contains("'features.0.weight'") && e.contains(want), "{e}");
    }
    // A negative BatchNorm variance (NaN after the sqrt); a negative weight is fine.
    let path = dir.path().join("negvar.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert("bn1.running_var".to_string(), Tensor::new(&[1f32, -0.5, 2.], &Device::Cpu).unwrap());
    m.insert("bn1.weight".to_string(), Tensor::new(&[-1f32, 1., 1.], &Device::Cpu).unwrap());
    candle_core::safetensors::save(&m, &path).unwrap();
    let e = format!("{:#}", transfer_workbook::checkpoint::read_tensors(&path).unwrap_err());
    assert!(e.contains("negvar.safetensors") && e.contains("'bn1.running_var' holds 1 negative values of 3"), "{e}");
}

/// Every other choice that shapes the training is recorded with the checkpoint: a `--resume`
/// that changes one is refused before any tensor is loaded, naming it with its old and new value.
#[test]
fn resume_refuses_each_changed_setting_naming_old_and_new() {
    let (data, out) = finished_run(3, &["--epochs", "1"]);
    let d = s(data.path());
    let o = s(out.path());
    let model = tensors(&out.path().join("model.safetensors"));
    let resume = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = train_args(d, o, &["--epochs", "2", "--resume"]).into_iter().map(String::from).collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (resume(&["--lr", "0.5"]), "the learning rate (--lr) was 0.0005, now 0.5"),
        (resume(&["--head-lr-mult", "3"]), "(--head-lr-mult) was 1, now 3"),
        (resume(&["--seed", "5"]), "--seed was 0, now 5"),
        (resume(&["--optimizer", "adam"]), "the optimizer (--optimizer, --momentum, --weight-decay) was"),
        (resume(&["--momentum", "0.9"]), "the optimizer (--optimizer, --momentum, --weight-decay) was"),
        (resume(&["--bn", "frozen"]), "BatchNorm (--bn) was train, now frozen"),
        (resume(&["--freeze", "layer3"]), "the frozen blocks (--freeze) was"),
        (resume(&["--loss", "mean"]), "the loss (--loss) was"),
        (resume(&["--weight-decay", "0.01"]), "the optimizer (--optimizer, --momentum, --weight-decay) was"),
        (resume(&["--augment", "keras"]), "--augment was d2l, now keras"),
        (resume(&["--backbone", "resnet34"]), "--backbone was resnet18, now resnet34"),
        // On a CPU without AVX512-BF16 the flag itself is refused, before the resume check.
        (resume(&["--precision", "bf16"]), if has_avx512_bf16() { "--precision was f32, now bf16" } else { "--precision" }),
        (
            ["scratch", "--data", d, "--out", o, "--image-size", "48", "--batch-size", "4", "--quiet", "--epochs", "2", "--resume"].map(String::from).to_vec(),
            "--image-size was 32, now 48",
        ),
        // The same backbone, now from (this run's own) weights instead of scratch.
        (
            ["finetune", "--data", d, "--out", o, "--image-size", "32", "--batch-size", "4", "--quiet", "--epochs", "2", "--resume", "--weights", s(&out.path().join("model.safetensors"))]
                .map(String::from)
                .to_vec(),
            "the backbone's start (scratch, or pretrained weights) was scratch, now pretrained",
        ),
    ];
    check(cases, &out, &model, 1);
    // Another command on the same weights: `finetune` resumed as `freeze`.
    let w = s(&out.path().join("model.safetensors")).to_string();
    let tuned = tempfile::tempdir().unwrap();
    let t = s(tuned.path());
    let base = |cmd: &str| ["--data", d, "--out", t, "--image-size", "32", "--batch-size", "4", "--quiet", "--weights", &w].iter().fold(vec![cmd.to_string()], |mut v, a| { v.push(a.to_string()); v });
    let r = finetune(&[base("finetune"), vec!["--epochs".into(), "1".into()]].concat().iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(r.status.success(), "{}", text(&r));
    let tuned_model = tensors(&tuned.path().join("model.safetensors"));
    let cases: Vec<(Vec<String>, &str)> = vec![(
        [base("freeze"), vec!["--epochs".into(), "2".into(), "--resume".into()]].concat(),
        "the phases (the command) was finetune, now freeze",
    )];
    check(cases, &tuned, &tuned_model, 1);
    // The same settings continue it.
    let r = finetune(&train_args(d, o, &["--epochs", "2", "--resume"]), &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(history(out.path()).len(), 2);
}

#[cfg(target_arch = "x86_64")]
fn has_avx512_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512_bf16() -> bool {
    false
}

/// Each case fails with exit code 1 naming `want`, and leaves the finished run in `out` as it was.
fn check(cases: Vec<(Vec<String>, &str)>, out: &tempfile::TempDir, model: &BTreeMap<String, Vec<u8>>, epochs: usize) {
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = finetune(&args, &[]);
        let t = text(&r);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains("--resume: ") && t.contains(want) && t.contains("--overwrite to start over"), "{args:?}: expected '{want}' in:\n{t}");
        assert!(!t.contains("resuming from"), "{args:?} loaded the checkpoint: {t}");
        assert_eq!(&tensors(&out.path().join("model.safetensors")), model, "{args:?} touched the finished run");
        assert_eq!(history(out.path()).len(), epochs, "{args:?}");
    }
}

/// An `--overwrite` run that fails in training (a learning rate that diverges) leaves the run it
/// was to replace as it was: model, history, metrics and the checkpoint, and no `.replaced/`.
#[test]
fn a_failed_overwrite_keeps_the_run_it_was_to_replace() {
    let (data, out) = finished_run(2, &["--epochs", "1"]);
    let d = s(data.path());
    let names = ["model.safetensors", "history.json", "metrics.json", "checkpoint/state.json"];
    let before: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(out.path().join(n)).unwrap()).collect();
    let o = finetune(&train_args(d, s(out.path()), &["--epochs", "2", "--lr", "1e30", "--overwrite"]), &[]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("training diverged"), "{t}");
    assert!(t.contains("holds the run it was to replace, as it was"), "{t}");
    for (n, b) in names.iter().zip(&before) {
        assert_eq!(&std::fs::read(out.path().join(n)).unwrap(), b, "{n} changed");
    }
    assert!(!out.path().join(".replaced").exists() && !out.path().join(".replacing").exists());
    // It is still a finished run that resumes.
    let o = finetune(&train_args(d, s(out.path()), &["--epochs", "2", "--resume"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(history(out.path()).len(), 2);
}

/// A kill between writing a final output under its temporary name and renaming it: the next
/// run in the folder removes the `.NAME.tmp-PID` file, and `--resume` equals the uninterrupted run.
#[test]
fn a_kill_before_a_final_rename_leaves_no_temporary_file_behind() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 3, 1);
    let d = s(data.path());
    let base = tempfile::tempdir().unwrap();
    let o = finetune(&train_args(d, s(base.path()), &["--epochs", "1"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    for file in ["history.json", "model.safetensors"] {
        let out = tempfile::tempdir().unwrap();
        let o = finetune(&train_args(d, s(out.path()), &["--epochs", "1"]), &[("TRANSFER_WORKBOOK_FAULT", &format!("rename:{file}"))]);
        assert!(!o.status.success() && text(&o).contains("aborting at write step"), "{file}: {}", text(&o));
        let leftovers = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).filter(|n| n.contains(".tmp-")).collect()
        };
        assert_eq!(leftovers(out.path()).len(), 1, "{file}: the fault point was not reached");
        let o = finetune(&train_args(d, s(out.path()), &["--epochs", "1", "--resume"]), &[]);
        assert!(o.status.success(), "{file}: {}", text(&o));
        assert_eq!(leftovers(out.path()), Vec::<String>::new(), "{file}");
        assert_eq!(tensors(&out.path().join("model.safetensors")), tensors(&base.path().join("model.safetensors")), "{file}");
        assert_eq!(history(out.path()), history(base.path()), "{file}");
    }
}

/// A PNG whose header claims 20000 x 20000 grey pixels (a decompression bomb of a few dozen
/// bytes): training skips it naming the file and the size, predict refuses it; nothing panics.
#[test]
fn an_image_too_large_to_decode_is_skipped_in_training_and_refused_in_predict() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 2, 1);
    let bomb = data.path().join("train/red/+bomb.png");
    std::fs::write(&bomb, support::png_bomb(20000, 0)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = finetune(&train_args(s(data.path()), s(out.path()), &["--epochs", "1"]), &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("+bomb.png: image is 20000 x 20000 px, over the limit") && t.contains("1 file skipped"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    let o = finetune(&["predict", s(&bomb), "--weights", s(&out.path().join("model.safetensors")), "--image-size", "32"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("+bomb.png") && t.contains("20000 x 20000") && !t.contains("panicked"), "{t}");
}

#[test]
fn a_tiny_val_split_is_worded_briefly() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 2, 1);
    let out = tempfile::tempdir().unwrap();
    let o = finetune(&train_args(s(data.path()), s(out.path()), &["--epochs", "1", "--val-split", "1e-300"]), &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("1e-300") && t.lines().all(|l| l.len() < 300), "{t}");
}

/// A zip `.pth` whose `data.pkl` calls `posix.system` (what `torch.load` without
/// `weights_only` would run) is refused naming the global; nothing is executed.
#[test]
fn a_zip_pth_with_a_code_payload_is_refused_naming_the_global() {
    use pickles::{op, Pickle};
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("executed");
    let path = dir.path().join("payload.pth");
    let mut p = Pickle::default();
    p.proto2();
    p.global("posix", "system").str(&format!("touch {}", marker.display())).op(op::TUPLE1).op(op::REDUCE);
    zip_pth(&path, &p.stop(), &[]);
    let e = format!("{:#}", transfer_workbook::checkpoint::read_tensors(&path).unwrap_err());
    assert!(e.contains("payload.pth") && e.contains("pickle global posix.system") && e.contains("nothing is executed"), "{e}");
    assert!(!marker.exists());
}
