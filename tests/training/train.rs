//! Optimizer steps against hand-computed formulas, freezing, a short real training run, and
//! exact resumption from a checkpoint.


use crate::support;
use candle_core::{Device, Tensor, Var};
use std::sync::Arc;
use transfer_workbook::models::{Arch, BnMode, Classifier, Freeze, ModelOptions};
use transfer_workbook::tasks::experiment::load_data;
use transfer_workbook::train::{recipes, train, train_validated, OptimizerKind, ParamGroup, PhaseConfig, Reduction, TrainConfig};

fn var(v: &[f32]) -> Var {
    Var::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
}

fn vals(v: &Var) -> Vec<f32> {
    v.as_tensor().to_vec1::<f32>().unwrap()
}

/// loss = sum(a * ca) + sum(b * cb): the gradients are ca and cb.
fn step(opt: &mut transfer_workbook::train::Optimizer, a: &Var, b: &Var, ca: &[f32], cb: &[f32]) {
    let ta = Tensor::new(ca, &Device::Cpu).unwrap();
    let tb = Tensor::new(cb, &Device::Cpu).unwrap();
    let loss = ((a.as_tensor() * ta).unwrap().sum_all().unwrap() + (b.as_tensor() * tb).unwrap().sum_all().unwrap()).unwrap();
    opt.backward_step(&loss).unwrap();
}

fn close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "got {got:?}, want {want:?}");
    }
}

#[test]
fn sgd_with_momentum_weight_decay_and_two_groups_matches_hand_formula() {
    let (a, b) = (var(&[1.0, -2.0]), var(&[0.5]));
    let groups = vec![
        ParamGroup { name: "backbone".into(), lr: 0.1, lr_mult: 1.0, params: vec![("a".into(), a.clone())] },
        ParamGroup { name: "head".into(), lr: 1.0, lr_mult: 10.0, params: vec![("b".into(), b.clone())] },
    ];
    let mut opt = transfer_workbook::train::Optimizer::new(OptimizerKind::sgd(0.9, 0.01), groups);
    step(&mut opt, &a, &b, &[0.3, 0.4], &[-1.0]);
    // Step 1: d = g + wd*p; buf = d; p -= lr*buf.
    let d_a1 = [0.3 + 0.01 * 1.0, 0.4 + 0.01 * -2.0];
    let a1 = [1.0 - 0.1 * d_a1[0], -2.0 - 0.1 * d_a1[1]];
    let d_b1 = -1.0 + 0.01 * 0.5;
    let b1 = 0.5 - 1.0 * d_b1;
    close(&vals(&a), &a1);
    close(&vals(&b), &[b1]);
    step(&mut opt, &a, &b, &[0.3, 0.4], &[-1.0]);
    // Step 2: buf = 0.9*buf + (g + wd*p1); p -= lr*buf.
    let buf_a = [0.9 * d_a1[0] + 0.3 + 0.01 * a1[0], 0.9 * d_a1[1] + 0.4 + 0.01 * a1[1]];
    let buf_b = 0.9 * d_b1 + (-1.0 + 0.01 * b1);
    close(&vals(&a), &[a1[0] - 0.1 * buf_a[0], a1[1] - 0.1 * buf_a[1]]);
    close(&vals(&b), &[b1 - 1.0 * buf_b]);
}

#[test]
fn adamw_matches_hand_formula() {
    let (a, b) = (var(&[1.0]), var(&[-1.0]));
    let groups = vec![
        ParamGroup { name: "backbone".into(), lr: 0.01, lr_mult: 1.0, params: vec![("a".into(), a.clone())] },
        ParamGroup { name: "head".into(), lr: 0.1, lr_mult: 10.0, params: vec![("b".into(), b.clone())] },
    ];
    let (b1, b2, eps, wd) = (0.9f64, 0.999f64, 1e-8f64, 0.1f64);
    let mut opt = transfer_workbook::train::Optimizer::new(OptimizerKind::AdamW { beta1: b1, beta2: b2, eps, weight_decay: wd }, groups);
    let grads = [[0.5f64, 2.0], [-0.25, 1.0]];
    let mut p = [1.0f64, -1.0];
    let lrs = [0.01, 0.1];
    let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
    for (t, g) in grads.iter().enumerate() {
        step(&mut opt, &a, &b, &[g[0] as f32], &[g[1] as f32]);
        let t = (t + 1) as i32;
        for i in 0..2 {
            p[i] *= 1.0 - lrs[i] * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
            p[i] -= lrs[i] * mh / (vh.sqrt() + eps);
        }
        close(&vals(&a), &[p[0]]);
        close(&vals(&b), &[p[1]]);
    }
}

fn data_and_model(dir: &std::path::Path, freeze: Freeze) -> (Arc<transfer_workbook::data::ImageFolder>, Arc<transfer_workbook::data::ImageFolder>, Classifier) {
    support::write_color_dataset(dir, 24, 12);
    let (train_ds, test_ds) = load_data(dir, None).unwrap();
    let opts = ModelOptions { freeze, seed: 5, ..ModelOptions::new(Arch::ResNet18, train_ds.classes.clone()) };
    (train_ds, test_ds, Classifier::scratch(&opts, &Device::Cpu).unwrap())
}

fn run_config(out: Option<std::path::PathBuf>, resume: bool) -> TrainConfig {
    support::small_train_config(out, resume)
}

fn adam_phase(epochs: usize, freeze: Freeze, bn_mode: BnMode) -> PhaseConfig {
    PhaseConfig {
        name: "test".into(),
        epochs,
        optimizer: OptimizerKind::adam(),
        lr: 1e-3,
        head_lr_mult: 1.0,
        freeze,
        bn_mode,
        reduction: Reduction::Mean,
        early_stopping: None,
        schedule: Default::default(),
        warmup_epochs: 0,
    }
}

#[test]
fn frozen_backbone_is_bit_identical_after_training_while_the_head_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te, model) = data_and_model(dir.path(), Freeze::Nothing);
    let before = model.state().into_iter().map(|(k, t)| (k, t.copy().unwrap())).collect::<std::collections::HashMap<_, _>>();
    let phases = [adam_phase(1, Freeze::Backbone, BnMode::Frozen)];
    let out = train(model, tr, te, &phases, &run_config(None, false), &mut |_, _| {}).unwrap();
    let after = out.model.state();
    for (k, t) in &before {
        let same = (t - &after[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() == 0.0;
        assert_eq!(same, !k.starts_with("fc."), "{k}: frozen tensors must not change, the head must");
    }
}

#[test]
fn short_training_on_generated_images_learns() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te, model) = data_and_model(dir.path(), Freeze::Nothing);
    let phases = [adam_phase(4, Freeze::Nothing, BnMode::Train)];
    let out = train(model, tr, te, &phases, &run_config(None, false), &mut |_, _| {}).unwrap();
    let r = &out.history.records;
    assert_eq!(r.len(), 4);
    assert!(r[3].loss < r[0].loss, "loss must go down: {r:?}");
    assert!(r[3].train_acc >= 0.8 && r[3].test_acc >= 0.8, "accuracy must be well above chance: {r:?}");
    assert!(r.iter().all(|e| e.examples_per_sec > 0.0));
}

#[test]
fn a_checkpoint_resumes_to_the_same_weights() {
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // With dropout before the head (as Lite0 has): its masks must resume exactly too.
    let (tr, te, m1) = data_and_model(data.path(), Freeze::Nothing);
    let (m1, m2, m3) = (m1.with_dropout(0.3), data_and_model(data.path(), Freeze::Nothing).2.with_dropout(0.3), data_and_model(data.path(), Freeze::Nothing).2.with_dropout(0.3));
    let sgd = |epochs| PhaseConfig { optimizer: OptimizerKind::sgd(0.9, 1e-3), ..recipes::d2l_scratch(epochs) };

    let a = train(m1, tr.clone(), te.clone(), &[sgd(2)], &run_config(Some(straight.path().into()), false), &mut |_, _| {}).unwrap();
    // The same run interrupted after epoch 1, then resumed by a new process-like call.
    train(m2, tr.clone(), te.clone(), &[sgd(1)], &run_config(Some(split.path().into()), false), &mut |_, _| {}).unwrap();
    let b = train(m3, tr, te, &[sgd(2)], &run_config(Some(split.path().into()), true), &mut |_, _| {}).unwrap();
    assert_eq!(b.history.records.len(), 2);
    assert_eq!(a.history.records[1].loss, b.history.records[1].loss, "{:?}\n{:?}", a.history.records, b.history.records);
    let (sa, sb) = (a.model.state(), b.model.state());
    for (k, t) in &sa {
        let d = (t - &sb[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} differs after resuming");
    }
}

#[test]
fn two_phase_recipe_marks_phases_and_restores_the_best_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (tr, te, model) = data_and_model(dir.path(), Freeze::Nothing);
    let mut phases = recipes::keras_two_phase(Arch::ResNet18, 2, 3, None, 1);
    phases[1].lr = 1e-3;
    // Early stopping never watches the test split: without validation the run is refused.
    let err = train(model.rebuild(Freeze::Nothing, BnMode::Train).unwrap(), tr.clone(), te.clone(), &phases, &run_config(None, false), &mut |_, _| {}).err().expect("no validation split");
    assert!(err.to_string().contains("needs a validation split"), "{err}");
    let (tr, val) = transfer_workbook::data::carve_validation(&tr, 0.25, 3).unwrap();
    let (tr, val) = (Arc::new(tr), Arc::new(val));
    let o = train_validated(model, tr, Some(val), te, &phases, &run_config(Some(out.path().into()), false), &mut |_, _| {}).unwrap();
    let h = &o.history;
    assert_eq!(h.records[0].phase, "head");
    assert_eq!(h.phase_starts(), vec![(3, "fine-tune".to_string())]);
    let best = h.best_epoch.expect("early stopping keeps a best epoch");
    // Chosen on the validation loss: the kept epoch has the lowest of phase 2.
    let best_loss = h.records.iter().find(|r| r.epoch == best).unwrap().val_loss.unwrap();
    assert!(h.records.iter().filter(|r| r.phase == "fine-tune").all(|r| r.val_loss.unwrap() >= best_loss));
    // The model now holds the best epoch's weights.
    let saved = transfer_workbook::checkpoint::RunFiles { dir: out.path().into() }.load_best().unwrap().expect("the checkpoint keeps the best weights");
    for (k, t) in o.model.state() {
        let d = (t - &saved[&k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k}");
    }
}

/// Same seed, any thread count: the trained weights are identical bit for bit (with dropout).
#[test]
fn training_is_bit_identical_with_one_and_two_threads() {
    let data = tempfile::tempdir().unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let (tr, te, m) = data_and_model(data.path(), Freeze::Nothing);
            let phase = PhaseConfig { optimizer: OptimizerKind::sgd(0.9, 1e-3), ..recipes::d2l_scratch(1) };
            train(m.with_dropout(0.3), tr, te, &[phase], &run_config(None, false), &mut |_, _| {}).unwrap()
        })
    };
    let (a, b) = (run(1), run(2));
    assert_eq!(a.history.records[0].loss, b.history.records[0].loss);
    let (sa, sb) = (a.model.state(), b.model.state());
    for (k, t) in &sa {
        let same = t.flatten_all().unwrap().to_vec1::<f32>().unwrap() == sb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(same, "{k} differs between 1 and 2 threads");
    }
}

/// Every epoch's test and validation scores are what a full forward pass of that epoch's model
/// gives, bit for bit: also where the phase evaluates from cached activations (backbone frozen
/// with BatchNorm `Frozen`: the pooled features; `Below("layer4")`: layer4's input, layer4
/// itself trains), and where it must not cache (BatchNorm `Train` moves the running statistics
/// of frozen blocks). Caching one step too many, or ignoring BatchNorm, fails it.
#[test]
fn per_epoch_evaluation_equals_a_full_forward_pass_with_or_without_cached_activations() {
    use transfer_workbook::train::{evaluate, Activations, ACTIVATION_CACHE_BYTES};
    let data = tempfile::tempdir().unwrap();
    for (freeze, bn) in [(Freeze::Backbone, BnMode::Frozen), (Freeze::Backbone, BnMode::Train), (Freeze::Below("layer4".into()), BnMode::Frozen)] {
        let (tr, te, model) = data_and_model(data.path(), Freeze::Nothing);
        let (tr, val) = transfer_workbook::data::carve_validation(&tr, 0.25, 3).unwrap();
        let (tr, val) = (Arc::new(tr), Arc::new(val));
        let cfg = run_config(None, false);
        let pipe = Arc::new(cfg.test_pipeline.clone());
        let mut seen = Vec::new();
        let out = train_validated(model, tr, Some(val.clone()), te.clone(), &[adam_phase(3, freeze.clone(), bn)], &cfg, &mut |rec, _| seen.push(rec.clone())).unwrap();
        // The last epoch's scores against the trained model's, by full forward passes.
        let last = seen.last().unwrap();
        let (test_loss, test_acc) = evaluate(&out.model, &te, &pipe, cfg.batch_size).unwrap();
        let (val_loss, val_acc) = evaluate(&out.model, &val, &pipe, cfg.batch_size).unwrap();
        let what = format!("{freeze:?}, BatchNorm {bn:?}");
        assert_eq!((last.test_loss, last.test_acc), (test_loss, test_acc), "{what}: test");
        assert_eq!((last.val_loss, last.val_acc), (Some(val_loss), Some(val_acc)), "{what}: validation");
        // The head moved between epochs, so the scores did too (the cache is not a stale copy).
        assert_ne!(seen[0].test_loss, last.test_loss, "{what}");
        // What the phase cached: pooled features, layer4's input, or nothing (BatchNorm trains).
        let cached = Activations::of(&out.model, &te, &pipe, cfg.batch_size, ACTIVATION_CACHE_BYTES).unwrap().map(|a| a.steps());
        let want = match (&freeze, bn) {
            (_, BnMode::Train) => None,
            (Freeze::Backbone, _) => Some(6),
            _ => Some(4),
        };
        assert_eq!(cached, want, "{what}");
        if cached.is_some() {
            assert!(Activations::of(&out.model, &te, &pipe, cfg.batch_size, 1000).unwrap().is_none(), "{what}: over the size limit, no cache");
        }
    }
}
