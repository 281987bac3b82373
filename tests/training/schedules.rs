//! `--schedule` in a real training loop: the lr recorded per epoch is the mean of the per-step
//! lrs computed by hand, a scheduled run resumes bit for bit, and the CLI flags reach history.json.


use crate::support;
use candle_core::Device;
use std::sync::Arc;
use transfer_workbook::data::ImageFolder;
use transfer_workbook::tasks::experiment::load_data;
use transfer_workbook::models::{Arch, Classifier, ModelOptions};
use transfer_workbook::train::{recipes, train, OptimizerKind, PhaseConfig, Schedule, TrainConfig};

fn model(classes: Vec<String>) -> Classifier {
    Classifier::scratch(&ModelOptions { seed: 5, ..ModelOptions::new(Arch::ResNet18, classes) }, &Device::Cpu).unwrap()
}

fn config(out: Option<std::path::PathBuf>, resume: bool) -> TrainConfig {
    support::small_train_config(out, resume)
}

fn data(dir: &std::path::Path) -> (Arc<ImageFolder>, Arc<ImageFolder>) {
    // 24 + 24 training images at batch 16: 3 steps per epoch.
    support::write_color_dataset(dir, 24, 6);
    load_data(dir, None).unwrap()
}

fn cosine(epochs: usize) -> PhaseConfig {
    PhaseConfig { optimizer: OptimizerKind::sgd(0.9, 1e-3), schedule: Schedule::Cosine, ..recipes::d2l_scratch(epochs) }
}

#[test]
fn cosine_lr_per_epoch_is_the_mean_of_the_hand_computed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te) = data(dir.path());
    let out = train(model(tr.classes.clone()), tr, te, &[cosine(2)], &config(None, false), &mut |_, _| {}).unwrap();
    // 6 steps: 0.5 * (1 + cos(pi * s / 6)) = 1, 0.9330127, 0.75 | 0.5, 0.25, 0.0669873.
    let f = |s: f64| 0.5 * (1.0 + (std::f64::consts::PI * s / 6.0).cos());
    let want = [(f(0.0) + f(1.0) + f(2.0)) / 3.0 * 5e-4, (f(3.0) + f(4.0) + f(5.0)) / 3.0 * 5e-4];
    assert!((want[0] - 0.894_337_6 * 5e-4).abs() < 1e-9 && (want[1] - 0.272_329_1 * 5e-4).abs() < 1e-9);
    for (r, w) in out.history.records.iter().zip(want) {
        assert!((r.lr - w).abs() < 1e-15, "epoch {}: lr {} want {w}", r.epoch, r.lr);
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn a_scheduled_run_resumes_to_the_same_weights() {
    let (straight, split, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (tr, te) = data(d.path());
    let classes = tr.classes.clone();
    let phase = [PhaseConfig { schedule: Schedule::Onecycle, warmup_epochs: 1, ..cosine(2) }];
    // The straight run's checkpoint after epoch 1 is copied: what an interrupted run leaves.
    let (sp, cp) = (straight.path().to_path_buf(), split.path().to_path_buf());
    let a = train(model(classes.clone()), tr.clone(), te.clone(), &phase, &config(Some(sp.clone()), false), &mut |r, _| {
        if r.epoch == 1 {
            copy_dir(&sp, &cp);
        }
    })
    .unwrap();
    let b = train(model(classes), tr, te, &phase, &config(Some(cp), true), &mut |_, _| {}).unwrap();
    assert_eq!(b.history.records.len(), 2);
    assert_eq!(a.history.records, b.history.records.iter().map(|r| transfer_workbook::train::EpochRecord { train_seconds: a.history.records[r.epoch - 1].train_seconds, examples_per_sec: a.history.records[r.epoch - 1].examples_per_sec, ..r.clone() }).collect::<Vec<_>>());
    // Onecycle with a one-epoch warmup: epoch 1 rises (mean below the peak), epoch 2 falls.
    assert!(a.history.records[0].lr < 5e-4 && a.history.records[1].lr < 5e-4 && a.history.records[0].lr != a.history.records[1].lr);
    let (sa, sb) = (a.model.state(), b.model.state());
    for (k, t) in &sa {
        let d = (t - &sb[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} differs after resuming");
    }
}

#[test]
fn cli_schedule_flags_reach_history_and_bad_warmup_is_an_error() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 8, 4);
    let out = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["scratch", "--data", data.path().to_str().unwrap(), "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--out", out.path().to_str().unwrap(), "--quiet"];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_finetune")).args(&args).output().unwrap()
    };
    // 16 images at batch 8: 2 steps per epoch, 4 in all, the first 2 warming up (1/2, 2/2), then
    // cosine over 2 steps (1, 0.5): both epochs average 0.75 x 5e-4.
    let o = run(&["--schedule", "cosine", "--warmup-epochs", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let h: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("history.json")).unwrap()).unwrap();
    for e in h.as_array().unwrap() {
        assert!((e["lr"].as_f64().unwrap() - 3.75e-4).abs() < 1e-12, "{e}");
    }
    let o = run(&["--warmup-epochs", "3"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--warmup-epochs 3"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["--schedule", "linear"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("onecycle"));
}
