//! Trainable backbones: equal to candle-transformers' models in eval mode, BatchNorm modes,
//! max-pool and convolution gradients, and clear errors for wrong weight files.

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use transfer_workbook::checkpoint::{default_weights, read_named, read_tensors, save_safetensors, WeightsSource};
use transfer_workbook::models::NamedTensors;
use transfer_workbook::models::{Arch, BnMode, Classifier, Freeze, HeadInit, ModelOptions};
use transfer_workbook::ops::{conv2d, max_pool2d};

fn opts(arch: Arch, classes: usize) -> ModelOptions {
    ModelOptions { seed: 3, ..ModelOptions::new(arch, (0..classes).map(|i| format!("c{i}")).collect()) }
}

/// A random model whose BatchNorm running statistics are not the trivial 0/1.
fn random_model(arch: Arch, classes: usize) -> Classifier {
    let m = Classifier::scratch(&opts(arch, classes), &Device::Cpu).unwrap();
    let mut state = m.state();
    for (k, t) in state.iter_mut() {
        if k.ends_with("running_mean") {
            *t = (Tensor::rand(0f32, 1f32, t.shape(), &Device::Cpu).unwrap() - 0.5).unwrap();
        } else if k.ends_with("running_var") {
            *t = (Tensor::rand(0f32, 1f32, t.shape(), &Device::Cpu).unwrap() + 0.5).unwrap();
        } else if k.ends_with("bn1.weight") || k.ends_with("bn2.weight") {
            *t = Tensor::rand(0.5f32, 1.5f32, t.shape(), &Device::Cpu).unwrap();
        }
    }
    m.load_state(&state, "test").unwrap();
    m
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn compare_with_candle_transformers(arch: Arch) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let ours = random_model(arch, 1000);
    save_safetensors(&ours.state(), HashMap::new(), &path).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu).unwrap() };
    let reference = match arch {
        Arch::ResNet18 => candle_transformers::models::resnet::resnet18(1000, vb).unwrap(),
        Arch::ResNet34 => candle_transformers::models::resnet::resnet34(1000, vb).unwrap(),
        Arch::ResNet50 => candle_transformers::models::resnet::resnet50(1000, vb).unwrap(),
        _ => unreachable!(),
    };
    let x = Tensor::randn(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap();
    let want = reference.forward(&x).unwrap();
    let got = ours.forward_t(&x, false).unwrap();
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let d = max_abs_diff(&want, &got);
    assert!(d <= 1e-4 * scale.max(1.0), "{arch}: max |diff| {d} (logit scale {scale})");
}

#[test]
fn resnet18_equals_candle_transformers_in_eval_mode() {
    compare_with_candle_transformers(Arch::ResNet18);
}

#[test]
fn resnet50_equals_candle_transformers_in_eval_mode() {
    compare_with_candle_transformers(Arch::ResNet50);
}

#[test]
fn batchnorm_train_mode_updates_running_stats_and_frozen_does_not() {
    let m = random_model(Arch::ResNet18, 2);
    let name = "bn1.running_mean";
    let before = m.state()[name].copy().unwrap();
    let x = (Tensor::randn(0f32, 1f32, (4, 3, 32, 32), &Device::Cpu).unwrap() * 3.0).unwrap();

    let frozen = m.rebuild(Freeze::Nothing, BnMode::Frozen).unwrap();
    frozen.forward_t(&x, true).unwrap();
    m.forward_t(&x, false).unwrap();
    assert_eq!(max_abs_diff(&before, &m.state()[name]), 0.0, "eval and frozen BN must not touch running stats");

    m.forward_t(&x, true).unwrap();
    let after = m.state()[name].copy().unwrap();
    assert!(max_abs_diff(&before, &after) > 1e-4, "train-mode BN must update running stats");
    // running = 0.9 * old + 0.1 * batch mean, checked on the stem's output channels.
    let w = m.state()["conv1.weight"].copy().unwrap();
    let y = x.conv2d(&w, 3, 2, 1, 1).unwrap();
    let batch_mean = y.mean((0, 2, 3)).unwrap();
    let want = ((before * 0.9).unwrap() + (batch_mean * 0.1).unwrap()).unwrap();
    assert!(max_abs_diff(&want, &after) < 1e-5);
}

#[test]
fn max_pool_matches_candle_forward_and_routes_gradient_to_the_max() {
    let dev = Device::Cpu;
    // Distinct values so every window has a unique maximum.
    let n = 2 * 3 * 9 * 9;
    let vals: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32).collect();
    let x = Var::from_vec(vals.clone(), (2, 3, 9, 9), &dev).unwrap();
    let ours = max_pool2d(x.as_tensor(), 3, 2, 1).unwrap();
    let reference = x.as_tensor().pad_with_same(D::Minus1, 1, 1).unwrap().pad_with_same(D::Minus2, 1, 1).unwrap().max_pool2d_with_stride(3, 2).unwrap();
    assert_eq!(ours.dims(), &[2, 3, 5, 5]);
    assert_eq!(max_abs_diff(&ours, &reference), 0.0);
    // d(sum)/dx: each element gets the number of windows in which it is the maximum.
    let grads = ours.sum_all().unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut want = vec![0f32; n];
    for bc in 0..6 {
        for oy in 0..5 {
            for ox in 0..5 {
                let mut best = (f32::MIN, 0);
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (y, x) = ((oy * 2 + dy) as i64 - 1, (ox * 2 + dx) as i64 - 1);
                        if (0..9).contains(&y) && (0..9).contains(&x) {
                            let i = bc * 81 + y as usize * 9 + x as usize;
                            if vals[i] > best.0 {
                                best = (vals[i], i);
                            }
                        }
                    }
                }
                want[best.1] += 1.0;
            }
        }
    }
    assert_eq!(g, want);
}

#[test]
fn conv_gradients_equal_candles_own() {
    let dev = Device::Cpu;
    for &(c_in, c_out, size, k, stride, pad) in &[(3, 4, 9, 3, 1, 1), (3, 4, 10, 3, 2, 1), (4, 5, 8, 1, 2, 0), (3, 4, 15, 7, 2, 3), (2, 3, 7, 3, 1, 0), (4, 4, 6, 5, 2, 2)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, c_in, size, size), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1., (2, c_out, (size + 2 * pad - k) / stride + 1, (size + 2 * pad - k) / stride + 1), &dev).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), stride, pad).unwrap();
        let theirs = x.as_tensor().conv2d(w.as_tensor(), pad, stride, 1, 1).unwrap();
        // On the CPU in f32 the forward is our im2col + GEMM (ops::conv::im2col), no longer Candle's
        // own conv2d, so it agrees to rounding (GEMM blocking differs) rather than bit for bit;
        // tests/ops/conv.rs checks it against an f64 reference.
        let d = max_abs_diff(&ours, &theirs);
        assert!(d < 1e-4, "k{k} s{stride} p{pad} size {size}: forward differs by {d}");
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let (a, b) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            let d = max_abs_diff(a, b);
            assert!(d < 1e-4, "k{k} s{stride} p{pad} size {size}: gradient differs by {d}");
        }
    }
}

#[test]
fn frozen_parameters_get_no_gradient() {
    let m = random_model(Arch::ResNet18, 2).rebuild(Freeze::Below("layer4".into()), BnMode::Train).unwrap();
    let (backbone, head) = m.trainable();
    assert!(backbone.iter().all(|(n, _)| n.starts_with("layer4.")));
    assert_eq!(head.len(), 2);
    let x = Tensor::randn(0f32, 1f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let grads = m.forward_t(&x, true).unwrap().sum_all().unwrap().backward().unwrap();
    let all = m.backbone_store.named_vars();
    assert!(grads.get(all["layer4.0.conv1.weight"].as_tensor()).is_some());
    assert!(grads.get(all["layer3.0.conv1.weight"].as_tensor()).is_none());
    assert!(grads.get(all["conv1.weight"].as_tensor()).is_none());
}

#[test]
fn head_and_parameter_counts_match_torchvision() {
    let m = Classifier::scratch(&opts(Arch::ResNet18, 1000), &Device::Cpu).unwrap();
    assert_eq!(m.head_description(), "Linear(in_features=512, out_features=1000, bias=True)");
    assert_eq!(m.parameter_counts(), (11_689_512, 11_689_512));
    let frozen = m.rebuild(Freeze::Backbone, BnMode::Train).unwrap();
    assert_eq!(frozen.parameter_counts().1, 513_000);
    let m50 = Classifier::scratch(&opts(Arch::ResNet50, 1000), &Device::Cpu).unwrap();
    assert_eq!(m50.parameter_counts().0, 25_557_032);
    // Xavier-uniform head for 2 classes: |w| <= sqrt(6 / (512 + 2)).
    let two = Classifier::scratch(&opts(Arch::ResNet18, 2), &Device::Cpu).unwrap();
    let w = two.state()["fc.weight"].abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(w <= (6.0f32 / 514.0).sqrt() && w > 0.5 * (6.0f32 / 514.0).sqrt());
}

#[test]
fn weight_files_with_missing_or_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = random_model(Arch::ResNet18, 2).state();
    let o = opts(Arch::ResNet18, 2);

    let mut missing = good.clone();
    missing.remove("layer3.1.bn2.running_var");
    let err = Classifier::pretrained(&o, &NamedTensors::new(missing, "w.safetensors"), &Device::Cpu).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("layer3.1.bn2.running_var") && msg.contains("w.safetensors"), "{msg}");

    let mut wrong = good.clone();
    wrong.insert("layer2.0.conv1.weight".into(), Tensor::zeros((64, 64, 3, 3), DType::F32, &Device::Cpu).unwrap());
    let path = dir.path().join("wrong.safetensors");
    save_safetensors(&wrong, HashMap::new(), &path).unwrap();
    let t = read_tensors(&path).unwrap();
    let err = Classifier::pretrained(&o, &NamedTensors::new(t, path.display().to_string()), &Device::Cpu).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("layer2.0.conv1.weight") && msg.contains("[64, 64, 3, 3]") && msg.contains("[128, 64, 3, 3]"), "{msg}");

    let not_weights = dir.path().join("notes.bin");
    std::fs::write(&not_weights, b"hello world").unwrap();
    let err = read_tensors(&not_weights).unwrap_err().to_string();
    assert!(err.contains("notes.bin"), "{err}");
    let err = WeightsSource::parse("/no/such/file.safetensors").resolve(None).unwrap_err().to_string();
    assert!(err.contains("/no/such/file.safetensors") && err.contains("not found"), "{err}");
}

#[test]
fn unknown_backbone_lists_the_known_ones() {
    let err = Arch::from_name("vgg16").unwrap_err().to_string();
    assert!(err.contains("vgg16") && err.contains("resnet18"), "{err}");
    assert_eq!(Arch::from_name("ResNet-50").unwrap(), Arch::ResNet50);
}

#[test]
fn hub_weights_resolve_from_a_local_hf_cache_without_network() {
    // The layout hf-hub writes: models--owner--name/{refs/main, snapshots/<commit>/<file>}.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--timm--resnet18.tv_in1k");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    let m = random_model(Arch::ResNet18, 1000);
    save_safetensors(&m.state(), HashMap::new(), &snap.join("model.safetensors")).unwrap();

    let src = WeightsSource::parse("hf:timm/resnet18.tv_in1k");
    assert_eq!(src, default_weights(Arch::ResNet18));
    let path = src.resolve(Some(cache.path())).unwrap();
    assert_eq!(path, snap.join("model.safetensors"));
    let mut o = opts(Arch::ResNet18, 1000);
    o.head_init = HeadInit::ImageNet;
    let loaded = Classifier::pretrained(&o, &read_named(&path).unwrap(), &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1f32, (1, 3, 32, 32), &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&loaded.forward_t(&x, false).unwrap(), &m.forward_t(&x, false).unwrap()), 0.0);
}

/// The fused CPU BatchNorm against the same arithmetic written with tensor ops.
#[test]
fn fused_batchnorm_matches_tensor_op_reference_forward_and_backward() {
    use transfer_workbook::ops::batch_norm::{batch_norm_eval, batch_norm_train};
    let dev = Device::Cpu;
    let x = Var::from_tensor(&(Tensor::randn(0f32, 2., (3, 4, 5, 6), &dev).unwrap() + 1.0).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 4, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 4, &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1., (3, 4, 5, 6), &dev).unwrap();
    let eps = 1e-3;
    let view = |t: &Tensor| t.reshape((1, 4, 1, 1)).unwrap();
    for batch_stats in [true, false] {
        let (rm, rv) = (Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap(), Tensor::new(&[1.5f32, 0.5, 2.0, 1.0], &dev).unwrap());
        let ours = if batch_stats {
            batch_norm_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), eps).unwrap().0
        } else {
            batch_norm_eval(x.as_tensor(), w.as_tensor(), b.as_tensor(), &rm, &rv, eps).unwrap()
        };
        // Reference: statistics computed inside the graph when they come from the batch.
        let (m, v) = if batch_stats {
            let m = x.as_tensor().mean_keepdim((0, 2, 3)).unwrap();
            let v = x.as_tensor().broadcast_sub(&m).unwrap().sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
            (m, v)
        } else {
            (view(&rm), view(&rv))
        };
        let reference = x
            .as_tensor()
            .broadcast_sub(&m)
            .unwrap()
            .broadcast_div(&(v + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&view(w.as_tensor()))
            .unwrap()
            .broadcast_add(&view(b.as_tensor()))
            .unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-5);
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let d = max_abs_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(d < 1e-4, "batch_stats={batch_stats}: d{name} differs by {d}");
        }
    }
}

/// The depthwise kernel against Candle's grouped convolution, with TF-style asymmetric padding.
#[test]
fn depthwise_conv_matches_candle_grouped_conv_with_gradients() {
    use transfer_workbook::ops::{depthwise_conv2d, DwParams};
    use transfer_workbook::models::efficientnet_lite::same_padding;
    let dev = Device::Cpu;
    for &(k, stride, size) in &[(3usize, 1usize, 8usize), (3, 2, 8), (5, 2, 9), (5, 1, 7)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, size, size), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 1, k, k), &dev).unwrap()).unwrap();
        let (pt, pb) = same_padding(size, k, stride);
        let p = DwParams { stride, pad_top: pt, pad_bottom: pb, pad_left: pt, pad_right: pb };
        let ours = depthwise_conv2d(x.as_tensor(), w.as_tensor(), p).unwrap();
        let padded = x.as_tensor().pad_with_zeros(2, pt, pb).unwrap().pad_with_zeros(3, pt, pb).unwrap();
        let theirs = padded.conv2d(w.as_tensor(), 0, stride, 1, 3).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert_eq!(ours.dims()[2], size.div_ceil(stride), "SAME padding keeps ceil(size / stride)");
        assert!(max_abs_diff(&ours, &theirs) < 1e-5);
        let r = Tensor::randn(0f32, 1., ours.shape(), &dev).unwrap();
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let d = max_abs_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(d < 1e-4, "k{k} s{stride}: gradient differs by {d}");
        }
    }
}

#[test]
fn same_padding_is_tensorflows() {
    use transfer_workbook::models::efficientnet_lite::same_padding;
    // As the reference's static padding for a 224 input: (0, 1) for 3x3/s2, (1, 2) for 5x5/s2.
    assert_eq!(same_padding(224, 3, 2), (0, 1));
    assert_eq!(same_padding(56, 5, 2), (1, 2));
    assert_eq!(same_padding(14, 3, 1), (1, 1));
    assert_eq!(same_padding(7, 5, 1), (2, 2));
}

/// A zip-format (PyTorch >= 1.6) checkpoint, state dict nested under `state_dict`, written by
/// torch 2.x (tests/fixtures/tiny_zip.pth, 2 KB): `conv1.weight = arange(6)/10`, `fc.weight`
/// saved as a transposed view.
#[test]
fn zip_pth_checkpoints_are_read() {
    let t = read_tensors(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_zip.pth"))).unwrap();
    let conv = t["conv1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(conv, vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5]);
    assert_eq!(t["conv1.weight"].dims(), &[2, 3, 1, 1]);
    assert_eq!(t["fc.weight"].to_vec2::<f32>().unwrap(), vec![vec![1.0, 0.5], vec![-2.0, 0.25]]);
}

#[test]
fn head_can_start_from_an_imagenet_row() {
    let imagenet = random_model(Arch::ResNet18, 1000).state();
    let mut o = opts(Arch::ResNet18, 2);
    o.head_init = HeadInit::ImageNetRow { imagenet_class: 934, target: 1 };
    let m = Classifier::pretrained(&o, &NamedTensors::new(imagenet.clone(), "imagenet"), &Device::Cpu).unwrap();
    let s = m.state();
    let row = |t: &Tensor, i: usize| t.get(i).unwrap();
    assert_eq!(max_abs_diff(&row(&s["fc.weight"], 1), &row(&imagenet["fc.weight"], 934)), 0.0);
    assert_eq!(max_abs_diff(&row(&s["fc.bias"], 1), &row(&imagenet["fc.bias"], 934)), 0.0);
    // The other row keeps its Xavier start.
    let xavier = Classifier::scratch(&opts(Arch::ResNet18, 2), &Device::Cpu).unwrap().state();
    assert_eq!(max_abs_diff(&row(&s["fc.weight"], 0), &row(&xavier["fc.weight"], 0)), 0.0);
}

#[test]
fn the_forward_pass_split_after_any_step_gives_the_full_passes_bits() {
    for arch in [Arch::ResNet18, Arch::EfficientNetLite0] {
        let m = random_model(arch, 3);
        let x = Tensor::randn(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let want = m.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(want.iter().all(|v| v.is_finite()), "{arch}: {want:?}");
        let n = arch.steps().len();
        for k in 0..=n {
            let a = m.activations(&x, k).unwrap();
            let got = m.logits_from(&a, k).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{arch}: split after {k} of {n} steps");
        }
        // The pooled features are the activations after every step.
        assert_eq!(m.activations(&x, n).unwrap().dims(), &[2, arch.feature_dim()]);
        let err = m.activations(&x, n + 1).unwrap_err().to_string();
        assert!(err.contains(&format!("{n} steps")), "{err}");
    }
}

#[test]
fn fixed_steps_are_the_longest_run_of_steps_whose_blocks_are_all_frozen() {
    for arch in [Arch::ResNet18, Arch::ResNet50, Arch::EfficientNetLite0] {
        let steps = arch.steps();
        assert_eq!(steps.concat(), arch.blocks(), "{arch}: the steps run every block once, in order");
        assert_eq!(Freeze::Nothing.fixed_steps(arch), 0, "{arch}");
        assert_eq!(Freeze::Backbone.fixed_steps(arch), steps.len(), "{arch}");
        for block in arch.blocks() {
            let freeze = Freeze::Below(block.clone());
            let frozen = freeze.predicate(arch).unwrap();
            let is_frozen = |b: &String| frozen(&format!("{b}.weight"));
            let k = freeze.fixed_steps(arch);
            assert!(steps[..k].iter().flatten().all(is_frozen), "{arch} below {block}: a trainable block among the first {k} steps");
            assert!(!steps[k].iter().all(is_frozen), "{arch} below {block}: step {k} is frozen too");
        }
    }
    // By hand: the two-phase recipe's cuts (stem + blocks 0-10; stem + layer1-3).
    assert_eq!(Freeze::Below("_blocks.11".into()).fixed_steps(Arch::EfficientNetLite0), 12);
    assert_eq!(Freeze::Below("layer4".into()).fixed_steps(Arch::ResNet18), 4);
    assert_eq!(Freeze::Below("bn1".into()).fixed_steps(Arch::ResNet18), 0, "a step half frozen is not fixed");
    // BatchNorm in train mode moves the running statistics of frozen blocks: nothing is fixed.
    let m = random_model(Arch::ResNet18, 2);
    assert_eq!(m.rebuild(Freeze::Backbone, BnMode::Frozen).unwrap().fixed_steps(), 6);
    assert_eq!(m.rebuild(Freeze::Backbone, BnMode::Train).unwrap().fixed_steps(), 0);
}
