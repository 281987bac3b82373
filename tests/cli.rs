//! The `finetune` binary end to end on generated data, and its errors on bad input.

mod support;

use std::process::Command;

fn finetune(args: &[&str]) -> std::process::Output {
    finetune_in(std::path::Path::new("."), args)
}

/// The CLI run from the working directory `dir`.
fn finetune_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_finetune")).args(args).current_dir(dir).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn scratch_run_writes_every_output_and_d2l_summary() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 8, 4);
    let out = tempfile::tempdir().unwrap();
    let o = finetune(&[
        "scratch", "--data", data.path().to_str().unwrap(), "--image-size", "32", "--epochs", "2", "--batch-size", "8",
        "--out", out.path().to_str().unwrap(), "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["history.json", "curves.png", "curves.svg", "model.safetensors", "checkpoint/state.json"] {
        assert!(out.path().join(f).is_file(), "missing {f}");
    }
    let h: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("history.json")).unwrap()).unwrap();
    let epochs = h.as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for key in ["epoch", "loss", "train_acc", "test_acc", "examples_per_sec"] {
        assert!(epochs[1].get(key).is_some_and(|v| v.is_number()), "history.json lacks {key}");
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let n = lines.len();
    assert!(lines[n - 3].starts_with("loss ") && lines[n - 3].contains(", train acc ") && lines[n - 3].contains(", test acc "), "{stdout}");
    assert!(lines[n - 2].ends_with(" examples/sec on cpu"), "{stdout}");
    // The last line: the test accuracy of the model that was kept (no validation: the last epoch).
    assert!(lines[n - 1].starts_with("kept the last epoch (2): test acc "), "{stdout}");

    // The saved model says how it was trained: what predict and serve need to take raw photos.
    let card = transfer_workbook::checkpoint::ModelCard::read(&out.path().join("model.safetensors")).unwrap();
    assert_eq!(card.image_size, Some(32));
    assert_eq!(card.normalization, Some(transfer_workbook::transforms::Normalization::imagenet()));
    assert_eq!(card.classes, Some(vec!["blue".to_string(), "red".to_string()]));
    let last_test_acc = epochs[1]["test_acc"].as_f64().unwrap();
    assert_eq!(card.test_accuracy, Some(last_test_acc));
    assert!(card.trained_at.as_deref().is_some_and(|t| t.ends_with('Z') && t.len() == 20), "{:?}", card.trained_at);

    // The saved model predicts with its own class names.
    let img = data.path().join("test/red/0.png");
    let model = out.path().join("model.safetensors");
    let p = finetune(&["predict", img.to_str().unwrap(), "--weights", model.to_str().unwrap(), "--image-size", "32", "--top-k", "2"]);
    assert!(p.status.success(), "{}", text(&p));
    let s = text(&p);
    assert!(s.contains("red") && s.contains("blue") && s.contains('%'), "{s}");
}

#[test]
fn peek_writes_a_two_by_eight_grid() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 9, 1);
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("peek.png");
    let o = finetune(&["peek", "--data", data.path().to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let img = image::open(&png).unwrap();
    // 8 columns and 2 rows of 160 px cells with 4 px gaps.
    assert_eq!((img.width(), img.height()), (8 * 164 + 4, 2 * 164 + 4));
}

#[test]
fn bad_input_fails_with_a_clear_message_not_a_panic() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 2, 1);
    let d = data.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["scratch", "--data", "/no/such/dir", "--image-size", "32"], "/no/such/dir/train does not exist"),
        // Closed choices are clap value enums: the error lists what is possible.
        (vec!["scratch", "--data", d, "--backbone", "vgg16"], "invalid value 'vgg16' for '--backbone <BACKBONE>'"),
        (vec!["scratch", "--data", d, "--backbone", "vgg16"], "possible values: resnet18, resnet34, resnet50, efficientnet-lite0"),
        (vec!["finetune", "--data", d, "--optimizer", "rmsprop"], "invalid value 'rmsprop' for '--optimizer <OPTIMIZER>'"),
        (vec!["finetune", "--data", d, "--augment", "mixup"], "possible values: d2l, keras"),
        (vec!["finetune", "--data", d, "--head-init", "zeros"], "possible values: xavier, hotdog"),
        (vec!["finetune", "--data", d, "--bn", "eval"], "possible values: train, frozen"),
        (vec!["scratch", "--data", d, "--device", "tpu"], "unknown device 'tpu'"),
        (vec!["finetune", "--data", d, "--weights", "/no/such/weights.safetensors"], "weights file /no/such/weights.safetensors not found"),
        (vec!["freeze", "--data", d, "--freeze", "layer9", "--weights", "/no/such/w.pth"], "not found"),
        (vec!["two-phase", "--data", d, "--unfreeze-from", "layer9"], "no block 'layer9'"),
    ];
    for (args, want) in cases {
        let o = finetune(&args);
        let s = text(&o);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(s.contains(want), "{args:?}: expected '{want}' in:\n{s}");
        assert!(!s.contains("panicked"), "{args:?} panicked:\n{s}");
    }
}

/// The default EfficientNet-Lite0 weights are found wherever the CLI runs (not only from the
/// repository root): `.cache/weights` beside the crate is one of the places searched.
#[test]
fn default_lite0_weights_are_found_from_any_working_directory() {
    if support::lite0_weights().is_none() {
        return;
    }
    let elsewhere = tempfile::tempdir().unwrap();
    image::RgbImage::from_pixel(64, 48, image::Rgb([200, 120, 40])).save(elsewhere.path().join("photo.png")).unwrap();
    let o = finetune_in(elsewhere.path(), &["predict", "--backbone", "efficientnet-lite0", "--top-k", "3", "photo.png"]);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("photo.png:") && s.lines().filter(|l| l.contains('%')).count() == 3, "{s}");
    // With the weights nowhere to be found, the error says where it looked and how to fix it.
    let empty = tempfile::tempdir().unwrap();
    let o = finetune_in(empty.path(), &["predict", "--backbone", "efficientnet-lite0", "--weights", "efficientnet-lite0-57934424.pth", "photo.png"]);
    let s = text(&o);
    assert!(!o.status.success());
    assert!(s.contains("not found") && s.contains("just weights"), "{s}");
}

/// `--precision bf16` reaches the convolutions: the same run (same seed) trains to other
/// losses than in f32, says so in its summary and in the model card; a CPU without AVX512-BF16
/// refuses it by name.
#[test]
fn precision_bf16_trains_in_bf16_or_is_refused_by_name() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 8, 4);
    let run = |precision: &str| {
        let out = tempfile::tempdir().unwrap();
        let o = finetune(&[
            "scratch", "--data", data.path().to_str().unwrap(), "--image-size", "64", "--epochs", "1", "--batch-size", "8",
            "--out", out.path().to_str().unwrap(), "--quiet", "--precision", precision,
        ]);
        let history = std::fs::read_to_string(out.path().join("history.json")).ok();
        // The model card records the kernels the run trained on.
        let card = transfer_workbook::checkpoint::ModelCard::read(&out.path().join("model.safetensors")).ok().and_then(|c| c.kernels);
        (o, history.map(|h| serde_json::from_str::<serde_json::Value>(&h).unwrap()[0]["loss"].as_f64().unwrap()), card.map(|k| k.precision))
    };
    use transfer_workbook::ops::Precision;
    let (f32_run, f32_loss, f32_card) = run("f32");
    assert!(f32_run.status.success(), "{}", text(&f32_run));
    assert_eq!(f32_card, Some(Precision::F32));
    let (bf16_run, bf16_loss, bf16_card) = run("bf16");
    if transfer_workbook::ops::bf16_supported() {
        assert!(bf16_run.status.success(), "{}", text(&bf16_run));
        assert_eq!(bf16_card, Some(Precision::Bf16));
        assert!(String::from_utf8_lossy(&bf16_run.stdout).contains(" examples/sec on cpu, bf16"), "{}", text(&bf16_run));
        assert_ne!(f32_loss.unwrap(), bf16_loss.unwrap(), "bf16 trained exactly like f32: the flag did not reach the kernels");
    } else {
        assert!(!bf16_run.status.success() && text(&bf16_run).contains("AVX512-BF16"), "{}", text(&bf16_run));
    }
}

/// lr-find sweeps over the photos training would train on: --val-split holds its share out
/// (before, the flag was accepted and ignored), and is refused beside a DIR/val/ folder.
#[test]
fn lr_find_holds_out_the_validation_split() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 8, 2);
    let out = tempfile::tempdir().unwrap();
    let (d, o) = (data.path().to_str().unwrap(), out.path().to_str().unwrap());
    let args = ["lr-find", "--data", d, "--out", o, "--backbone", "resnet18", "--recipe", "scratch", "--image-size", "32", "--batch-size", "2", "--steps", "5", "--quiet"];
    let r = finetune(&[&args[..], &["--val-split", "0.25"]].concat());
    let t = text(&r);
    assert!(r.status.success(), "{t}");
    assert!(t.contains("validation: 4 photos held out of train (0.25 of each class, seed 0), 12 left to train on"), "{t}");
    assert!(t.contains("the sweep runs on the 12 training photos"), "{t}");
    std::fs::create_dir_all(data.path().join("val")).unwrap();
    let r = finetune(&[&args[..], &["--val-split", "0.25"]].concat());
    let t = text(&r);
    assert!(!r.status.success() && t.contains("--val-split 0.25 was given but") && t.contains("val exists"), "{t}");
}
