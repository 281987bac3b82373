//! The lr finder on a generated data set: one loss per step, geometric lrs, a suggestion inside
//! the swept range and below the divergence, the plot written, and the model left unchanged.


use crate::support;
use candle_core::Device;
use std::sync::Arc;
use transfer_workbook::tasks::experiment::load_data;
use transfer_workbook::models::{Arch, Classifier, ModelOptions};
use transfer_workbook::train::{lr_find, LrFindConfig, OptimizerKind, Reduction};
use transfer_workbook::transforms::{Normalization, Pipeline};

#[test]
fn sweep_records_every_step_geometrically_and_suggests_below_divergence() {
    let dir = tempfile::tempdir().unwrap();
    support::write_color_dataset(dir.path(), 40, 1);
    let (train, _) = load_data(dir.path(), None).unwrap();
    let model = Classifier::scratch(&ModelOptions { seed: 3, ..ModelOptions::new(Arch::ResNet18, train.classes.clone()) }, &Device::Cpu).unwrap();
    let before = model.state().into_iter().map(|(k, t)| (k, t.copy().unwrap())).collect::<std::collections::HashMap<_, _>>();
    let cfg = LrFindConfig {
        start_lr: 1e-5,
        end_lr: 100.0,
        max_steps: 100,
        batch_size: 4,
        optimizer: OptimizerKind::sgd(0.9, 0.0),
        head_lr_mult: 1.0,
        reduction: Reduction::Mean,
        ..Default::default()
    };
    let r = lr_find(&model, train, Arc::new(Pipeline::d2l_train(32, Normalization::imagenet())), &cfg).unwrap();
    // 80 images at batch 4: one pass is 20 steps, fewer than --steps 100.
    assert_eq!(r.planned_steps, 20);
    assert!(!r.points.is_empty() && r.points.len() <= 20);
    let ratio = (100.0f64 / 1e-5).powf(1.0 / 19.0);
    for (i, p) in r.points.iter().enumerate() {
        assert_eq!(p.step, i);
        let want = 1e-5 * ratio.powi(i as i32);
        assert!((p.lr / want - 1.0).abs() < 1e-9, "step {i}: lr {} want {want}", p.lr);
    }
    // Up to lr 100 with momentum, SGD on a randomly initialised ResNet blows up.
    let diverged = r.diverged_at.expect("the sweep diverges before lr 100");
    assert_eq!(diverged, r.points.last().unwrap().lr);
    assert!(r.points[..r.points.len() - 1].iter().all(|p| p.loss.is_finite() && p.smoothed.is_finite()));
    assert!(r.suggestion >= r.start_lr && r.suggestion <= r.end_lr, "{}", r.suggestion);
    assert!(r.suggestion < diverged && r.suggestion <= r.min_loss_lr, "suggestion {} min {} diverged {diverged}", r.suggestion, r.min_loss_lr);
    // The first smoothed value is the first loss (bias-corrected EMA).
    assert!((r.points[0].smoothed - r.points[0].loss).abs() < 1e-9);
    let png = dir.path().join("lr-find.png");
    transfer_workbook::plot::save_lr_find(&r, "lr finder", &png).unwrap();
    assert!(image::open(&png).unwrap().width() == 800);
    for (k, t) in model.state() {
        let d = (t - &before[&k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} changed by the sweep");
    }
}

#[test]
fn cli_lr_find_writes_plot_and_json_and_prints_the_rule() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 16, 1);
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["lr-find", "--recipe", "scratch", "--backbone", "resnet18", "--data", data.path().to_str().unwrap(), "--image-size", "32"])
        .args(["--batch-size", "2", "--start-lr", "1e-6", "--end-lr", "1e3", "--out", out.path().to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("suggested lr ") && (stdout.contains("valley") || stdout.contains("minimum")), "{stdout}");
    assert!(out.path().join("lr-find.png").is_file());
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("lr-find.json")).unwrap()).unwrap();
    let s = j["suggestion"].as_f64().unwrap();
    assert!(stdout.contains(&format!("suggested lr {s:.2e}")), "{stdout}");
    assert!(j["points"].as_array().unwrap().len() <= 16);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["lr-find", "--recipe", "scratch", "--data", data.path().to_str().unwrap(), "--start-lr", "1", "--end-lr", "0.1", "--image-size", "32", "--quiet"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--start-lr 1 must be below --end-lr 0.1"), "{}", String::from_utf8_lossy(&bad.stderr));
}
