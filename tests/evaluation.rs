//! Validation splits, the after-training report (metrics.json, confusion.png, top-losses.png),
//! `finetune evaluate`, every training command on a synthetic 5-class folder, and the errors on
//! bad validation input.

mod support;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;

fn finetune(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_finetune")).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const COLORS: [(&str, [u8; 3]); 5] = [("blue", [40, 60, 200]), ("gray", [128, 128, 128]), ("green", [40, 180, 60]), ("red", [200, 50, 40]), ("yellow", [220, 210, 40])];

/// `root/{train,test}/<class>/N.png`: the first `classes` colours, small noisy images.
fn write_dataset(root: &Path, classes: usize, train: usize, test: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (split, n) in [("train", train), ("test", test)] {
        for (class, base) in &COLORS[..classes] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let (w, h) = (rng.gen_range(36..48), rng.gen_range(36..48));
                let img = RgbImage::from_fn(w, h, |_, _| Rgb(std::array::from_fn(|c| (base[c] as i32 + rng.gen_range(-40..40)).clamp(0, 255) as u8)));
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The report of a run or of `evaluate` on the 5-class test split (3 photos per class).
fn check_report(out: &Path, test_per_class: usize) {
    let m = json(&out.join("metrics.json"));
    let classes = m["classes"].as_array().unwrap();
    assert_eq!(classes.iter().map(|c| c["class"].as_str().unwrap()).collect::<Vec<_>>(), ["blue", "gray", "green", "red", "yellow"]);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(m["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 5);
    for (row, c) in confusion.iter().zip(classes) {
        assert_eq!(row.iter().sum::<u64>(), test_per_class as u64, "{confusion:?}");
        assert_eq!(c["support"].as_u64(), Some(test_per_class as u64));
    }
    let diag: u64 = (0..5).map(|i| confusion[i][i]).sum();
    assert!((m["accuracy"].as_f64().unwrap() - diag as f64 / (5 * test_per_class) as f64).abs() < 1e-12);
    for png in ["confusion.png", "top-losses.png"] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() > 300 && img.height() > 40, "{png} is {}x{}", img.width(), img.height());
    }
}

/// Every training command on 5 classes with a validation split: history has val_loss and
/// val_acc, the report has 5 classes, and `evaluate` rewrites the same metrics from the saved model.
#[test]
fn every_command_trains_five_classes_with_validation_and_writes_the_report() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 5, 8, 3);
    let d = data.path().to_str().unwrap();
    let small = ["--image-size", "32", "--batch-size", "8", "--quiet", "--val-split", "0.25"];
    let mut runs: Vec<(&str, Vec<&str>)> = vec![("scratch", vec!["scratch", "--epochs", "2", "--patience", "1"])];
    let weights = support::lite0_weights();
    let w = weights.as_ref().map(|p| p.to_str().unwrap().to_string()).unwrap_or_default();
    if weights.is_some() {
        let lite = ["--backbone", "efficientnet-lite0", "--weights", w.as_str()];
        runs.push(("finetune", [&["finetune", "--epochs", "1"][..], &lite].concat()));
        runs.push(("freeze", [&["freeze", "--epochs", "1"][..], &lite].concat()));
        runs.push(("two-phase", [&["two-phase", "--head-epochs", "1", "--fine-epochs", "2", "--patience", "1"][..], &lite].concat()));
    }
    for (name, args) in runs {
        let out = tempfile::tempdir().unwrap();
        let o = out.path().to_str().unwrap();
        let all = [&args[..], &["--data", d, "--out", o], &small[..]].concat();
        let r = finetune(&all);
        let s = text(&r);
        assert!(r.status.success(), "{name}: {s}");
        // 8 photos per class, 0.25 held out: 2 per class validate, 6 train.
        assert!(s.contains("validation: 10 photos held out of train (0.25 of each class, seed 0), 30 left to train on"), "{name}: {s}");
        let stdout = String::from_utf8_lossy(&r.stdout);
        let last = stdout.lines().filter(|l| !l.is_empty()).last().unwrap();
        assert!(last.contains("test acc "), "{name}: the final line reports the kept model's test accuracy: {last}");
        let h = json(&out.path().join("history.json"));
        for e in h.as_array().unwrap() {
            assert!(e["val_loss"].is_number() && e["val_acc"].is_number() && e["test_acc"].is_number(), "{name}: {e}");
        }
        check_report(out.path(), 3);
        let before = json(&out.path().join("metrics.json"));
        // `evaluate` on the saved model gives the same metrics as the run's own report.
        let ev = tempfile::tempdir().unwrap();
        let model = out.path().join("model.safetensors");
        let e = finetune(&["evaluate", "--weights", model.to_str().unwrap(), "--data", d, "--image-size", "32", "--out", ev.path().to_str().unwrap()]);
        assert!(e.status.success(), "{name} evaluate: {}", text(&e));
        check_report(ev.path(), 3);
        let after = json(&ev.path().join("metrics.json"));
        assert_eq!(before["confusion"], after["confusion"], "{name}");
        assert_eq!(before["accuracy"], after["accuracy"], "{name}");
    }
}

/// Without validation nothing watches the test split: no `val_*` numbers, and `--patience`
/// is refused. A `DIR/val/` folder is used when present.
#[test]
fn validation_is_null_without_a_split_and_a_val_folder_is_used() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 2, 4, 2);
    let d = data.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let base = ["scratch", "--data", d, "--out", o, "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--quiet"];
    let r = finetune(&base);
    assert!(r.status.success(), "{}", text(&r));
    let h = json(&out.path().join("history.json"));
    assert!(h[0]["val_loss"].is_null() && h[0]["val_acc"].is_null(), "{h}");
    assert!(String::from_utf8_lossy(&r.stdout).trim_end().lines().last().unwrap().starts_with("kept the last epoch (1): test acc "), "{}", text(&r));

    let r = finetune(&[&base[..], &["--patience", "2"]].concat());
    assert!(!r.status.success());
    assert!(text(&r).contains("needs a validation split (--val-split F or a DIR/val/ folder): it never watches the test split"), "{}", text(&r));

    // DIR/val: a copy of test, so validation and test numbers agree.
    for class in ["blue", "gray"] {
        let to = data.path().join("val").join(class);
        std::fs::create_dir_all(&to).unwrap();
        for i in 0..2 {
            std::fs::copy(data.path().join(format!("test/{class}/{i}.png")), to.join(format!("{i}.png"))).unwrap();
        }
    }
    let r = finetune(&[&base[..], &["--patience", "2", "--overwrite"]].concat());
    assert!(r.status.success(), "{}", text(&r));
    let h = json(&out.path().join("history.json"));
    assert_eq!(h[0]["val_loss"], h[0]["test_loss"], "{h}");
    let r = finetune(&[&base[..], &["--val-split", "0.5", "--overwrite"]].concat());
    assert!(!r.status.success() && text(&r).contains("--val-split 0.5 was given but"), "{}", text(&r));
}

#[test]
fn bad_validation_input_fails_with_a_clear_message_not_a_panic() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 2, 3, 1);
    let d = data.path().to_str().unwrap();
    let empty = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(empty.path().join("train").join(class)).unwrap();
        std::fs::create_dir_all(empty.path().join("test").join(class)).unwrap();
    }
    std::fs::write(empty.path().join("train/a/notes.txt"), "not a photo").unwrap();
    let e = empty.path().to_str().unwrap();
    let tiny = tempfile::tempdir().unwrap();
    write_dataset(tiny.path(), 2, 1, 1);
    let t = tiny.path().to_str().unwrap();
    let no_model = tempfile::tempdir().unwrap();
    let missing = no_model.path().join("model.safetensors");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["scratch", "--data", d, "--val-split", "0"], "--val-split 0 is outside (0, 1)".into()),
        (vec!["scratch", "--data", d, "--val-split", "1"], "--val-split 1 is outside (0, 1)".into()),
        (vec!["freeze", "--data", d, "--val-split", "1.5"], "--val-split 1.5 is outside (0, 1)".into()),
        (vec!["two-phase", "--data", d, "--val-split=-0.2"], "--val-split -0.2 is outside (0, 1)".into()),
        (vec!["finetune", "--data", d, "--val-split", "NaN"], "--val-split NaN is outside (0, 1)".into()),
        // 1 photo per class cannot be split; 3 photos at 0.1 round to no validation photo.
        (vec!["scratch", "--data", t, "--val-split", "0.5", "--image-size", "32"], format!("class 'blue' in {t}/train/blue has 1 photo(s): too few to hold out 0.5")),
        (vec!["scratch", "--data", d, "--val-split", "0.1", "--image-size", "32"], format!("class 'blue' in {d}/train/blue has 3 photo(s): too few to hold out 0.1")),
        (vec!["scratch", "--data", e, "--val-split", "0.2", "--image-size", "32"], format!("class folder {e}/train/a has no image files")),
        (vec!["evaluate", "--weights", missing.to_str().unwrap(), "--data", d], format!("{} not found", missing.display())),
    ];
    for (args, want) in cases {
        let o = finetune(&args);
        let s = text(&o);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(s.contains(&want), "{args:?}: expected '{want}' in:\n{s}");
        assert!(!s.contains("panicked"), "{args:?} panicked:\n{s}");
    }
}
