//! A backbone plus a linear head, each in its own parameter store.

use super::store::{xavier_uniform, FreezeFn, NamedTensors, ParamGroup, ParamStore};
use super::{Arch, BnMode, Builder, FeatureExtractor, Freeze, HeadInit};
use crate::ops::Kernels;
use anyhow::{bail, Context};
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Init, Linear};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Everything needed to build a classifier. `ModelOptions::new(arch, classes)` gives the
/// defaults (Xavier head, nothing frozen, BatchNorm in train mode, seed 0); change fields with
/// struct update syntax: `ModelOptions { seed: 3, ..ModelOptions::new(arch, classes) }`.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    pub arch: Arch,
    pub class_names: Vec<String>,
    pub head_init: HeadInit,
    pub freeze: Freeze,
    pub bn_mode: BnMode,
    pub seed: u64,
    /// The CPU kernels of its convolutions (precision, Winograd).
    pub kernels: Kernels,
}

impl ModelOptions {
    pub fn new(arch: Arch, class_names: Vec<String>) -> Self {
        Self { arch, class_names, head_init: HeadInit::Xavier, freeze: Freeze::Nothing, bn_mode: BnMode::Train, seed: 0, kernels: Kernels::default() }
    }
}

pub struct Classifier {
    pub arch: Arch,
    pub class_names: Vec<String>,
    pub backbone_store: ParamStore,
    pub head_store: ParamStore,
    pub freeze: Freeze,
    pub bn_mode: BnMode,
    /// The CPU kernels its convolutions run on.
    pub kernels: Kernels,
    /// Dropout on the pooled features while training (0 disables it).
    pub dropout: f32,
    /// Draws the dropout masks; shared by rebuilt models and reseeded by the training loop at
    /// every epoch, so runs are reproducible and a resumed run draws what an uninterrupted one does.
    dropout_rng: Arc<Mutex<ChaCha8Rng>>,
    frozen: FreezeFn,
    features: Box<dyn FeatureExtractor>,
    head: Linear,
}

fn head_init_bias(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

impl Classifier {
    /// Build from stores that already exist (or are filled lazily by the build), running its
    /// convolutions on `kernels` (refused when this CPU cannot run them).
    pub fn from_stores(
        arch: Arch,
        class_names: Vec<String>,
        backbone_store: ParamStore,
        head_store: ParamStore,
        freeze: Freeze,
        bn_mode: BnMode,
        kernels: Kernels,
    ) -> anyhow::Result<Self> {
        kernels.check()?;
        let frozen = freeze.predicate(arch)?;
        let b = Builder { vb: backbone_store.builder(frozen.clone()), store: backbone_store.clone(), bn_mode, kernels };
        let features = arch.build(&b).with_context(|| format!("building the {arch} backbone"))?;
        let d = features.feature_dim();
        let n = class_names.len();
        if n == 0 {
            bail!("a classifier needs at least one class");
        }
        let hb = head_store.builder(Arc::new(|_: &str| false)).pp(arch.head_prefix());
        let w = hb.get_with_hints((n, d), "weight", xavier_uniform(d, n)).context("building the head")?;
        let bias = hb.get_with_hints(n, "bias", head_init_bias(d)).context("building the head")?;
        Ok(Self {
            arch,
            class_names,
            backbone_store,
            head_store,
            freeze,
            bn_mode,
            kernels,
            dropout: arch.default_dropout(),
            dropout_rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(0))),
            frozen,
            features,
            head: Linear::new(w, Some(bias)),
        })
    }

    /// A classifier with random weights everywhere (training from scratch).
    pub fn scratch(opts: &ModelOptions, device: &Device) -> anyhow::Result<Self> {
        let backbone = ParamStore::random(opts.seed.wrapping_add(1), DType::F32, device);
        let head = ParamStore::random(opts.seed, DType::F32, device);
        let model = Self::from_stores(opts.arch, opts.class_names.clone(), backbone, head, opts.freeze.clone(), opts.bn_mode, opts.kernels)?;
        model.seed_dropout(opts.seed, 0);
        Ok(model)
    }

    /// A classifier whose backbone comes from `p` and whose head is fresh or ImageNet's.
    pub fn pretrained(opts: &ModelOptions, p: &NamedTensors, device: &Device) -> anyhow::Result<Self> {
        let backbone = ParamStore::pretrained(p.clone(), DType::F32, device);
        let head = match opts.head_init {
            HeadInit::Xavier | HeadInit::ImageNetRow { .. } => ParamStore::random(opts.seed, DType::F32, device),
            HeadInit::ImageNet => ParamStore::pretrained(p.clone(), DType::F32, device),
        };
        let model = Self::from_stores(opts.arch, opts.class_names.clone(), backbone, head, opts.freeze.clone(), opts.bn_mode, opts.kernels)?;
        model.seed_dropout(opts.seed, 0);
        if let HeadInit::ImageNetRow { imagenet_class, target } = opts.head_init {
            model.copy_head_row(p, imagenet_class, target)?;
        }
        Ok(model)
    }

    /// Overwrite head row `target` (weight and bias) with row `source` of the pretrained head.
    fn copy_head_row(&self, p: &NamedTensors, source: usize, target: usize) -> anyhow::Result<()> {
        let prefix = self.arch.head_prefix();
        for leaf in ["weight", "bias"] {
            let name = format!("{prefix}.{leaf}");
            let src = p.tensors.get(&name).with_context(|| format!("{}: no tensor named '{name}' to take class {source} from", p.origin))?;
            if src.dim(0)? <= source {
                bail!("{}: '{name}' has {} rows, no class {source}", p.origin, src.dim(0)?);
            }
            let var = self.head_store.var(&name).with_context(|| format!("the head has no '{name}'"))?;
            if target >= var.dim(0)? {
                bail!("the head has {} classes, no class {target}", var.dim(0)?);
            }
            let row = src.narrow(0, source, 1)?.to_dtype(var.dtype())?.to_device(var.device())?;
            let cur = var.as_tensor();
            let n = cur.dim(0)?;
            let mut parts = Vec::new();
            if target > 0 {
                parts.push(cur.narrow(0, 0, target)?);
            }
            parts.push(row);
            if target + 1 < n {
                parts.push(cur.narrow(0, target + 1, n - target - 1)?);
            }
            var.set(&Tensor::cat(&parts, 0)?.copy()?)?;
        }
        Ok(())
    }

    /// The same parameters under another freezing / BatchNorm regime (cheap: storage is shared).
    pub fn rebuild(&self, freeze: Freeze, bn_mode: BnMode) -> anyhow::Result<Self> {
        self.rebuild_with(freeze, bn_mode, self.kernels)
    }

    /// The same parameters and regime on other kernels (e.g. bf16 products for inference).
    pub fn with_kernels(&self, kernels: Kernels) -> anyhow::Result<Self> {
        self.rebuild_with(self.freeze.clone(), self.bn_mode, kernels)
    }

    fn rebuild_with(&self, freeze: Freeze, bn_mode: BnMode, kernels: Kernels) -> anyhow::Result<Self> {
        let mut m = Self::from_stores(self.arch, self.class_names.clone(), self.backbone_store.clone(), self.head_store.clone(), freeze, bn_mode, kernels)?;
        m.dropout_rng = self.dropout_rng.clone();
        Ok(m.with_dropout(self.dropout))
    }

    /// Start the dropout masks of `epoch` afresh from `seed` (Candle's own dropout draws from an
    /// unseeded generator, which made EfficientNet-Lite0 runs differ run to run).
    pub fn seed_dropout(&self, seed: u64, epoch: u64) {
        if let Ok(mut rng) = self.dropout_rng.lock() {
            *rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
        }
    }

    /// Inverted dropout (`torch.nn.Dropout`): each value kept with probability `1 - p` and
    /// scaled by `1 / (1 - p)`, the mask drawn on the CPU from the seeded generator.
    fn apply_dropout(&self, f: &Tensor) -> Result<Tensor> {
        let p = self.dropout as f64;
        let scale = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.dropout_rng.lock().map_err(|_| candle_core::Error::Msg("dropout rng poisoned".into()))?;
            (0..f.elem_count()).map(|_| if rng.gen::<f64>() < p { 0.0 } else { scale }).collect()
        };
        let mask = Tensor::from_vec(mask, f.shape(), &Device::Cpu)?.to_dtype(f.dtype())?.to_device(f.device())?;
        f * mask
    }

    /// The same model with another dropout rate before the head (0 for exact comparisons).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn device(&self) -> &Device {
        self.backbone_store.device()
    }

    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.features.features_t(x, train)
    }

    /// How many leading steps of the backbone ([`Arch::steps`]) give the same output for the
    /// same image however this model trains: their blocks are frozen and BatchNorm is `Frozen`
    /// (no running statistic moves). 0 when BatchNorm trains.
    pub fn fixed_steps(&self) -> usize {
        match self.bn_mode {
            BnMode::Frozen => self.freeze.fixed_steps(self.arch),
            BnMode::Train => 0,
        }
    }

    /// The backbone's activations after its first `steps` steps, in evaluation mode.
    pub fn activations(&self, x: &Tensor, steps: usize) -> Result<Tensor> {
        self.features.forward_steps(x, 0..steps, false)
    }

    /// Logits `[B, num_classes]` in evaluation mode from `activations(x, steps)`, running the
    /// backbone's remaining steps and the head: `forward_t(x, false)` bit for bit.
    pub fn logits_from(&self, activations: &Tensor, steps: usize) -> Result<Tensor> {
        self.head.forward(&self.features.forward_steps(activations, steps..self.features.num_steps(), false)?)
    }

    /// Logits `[B, num_classes]`; `train` selects training behaviour (BatchNorm per `bn_mode`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.features.features_t(x, train)?;
        let f = if train && self.dropout > 0.0 { self.apply_dropout(&f)? } else { f };
        self.head.forward(&f)
    }

    /// The head as PyTorch prints it.
    pub fn head_description(&self) -> String {
        let (n, d) = self.head.weight().dims2().unwrap_or((0, 0));
        format!("Linear(in_features={d}, out_features={n}, bias=True)")
    }

    /// Trainable variables: (backbone, head), by name.
    pub fn trainable(&self) -> (Vec<(String, Var)>, Vec<(String, Var)>) {
        let none: FreezeFn = Arc::new(|_: &str| false);
        (self.backbone_store.trainable(&self.frozen), self.head_store.trainable(&none))
    }

    /// d2l's two learning rates: the trainable backbone at `lr` (no group when it is all
    /// frozen), the head at `lr * head_lr_mult`.
    pub fn param_groups(&self, lr: f64, head_lr_mult: f64) -> Vec<ParamGroup> {
        let (backbone, head) = self.trainable();
        let mut groups = Vec::new();
        if !backbone.is_empty() {
            groups.push(ParamGroup { name: "backbone".into(), lr, lr_mult: 1.0, params: backbone });
        }
        groups.push(ParamGroup { name: "head".into(), lr: lr * head_lr_mult, lr_mult: head_lr_mult, params: head });
        groups
    }

    /// (total parameters, trainable parameters), buffers excluded.
    pub fn parameter_counts(&self) -> (usize, usize) {
        let total = self.backbone_store.count(None) + self.head_store.count(None);
        let trainable = self.backbone_store.count(Some(&self.frozen)) + self.head_store.count(None);
        (total, trainable)
    }

    /// Every tensor, backbone and head, under its checkpoint name.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        for store in [&self.backbone_store, &self.head_store] {
            for (k, v) in store.named_vars() {
                m.insert(k, v.as_tensor().detach());
            }
        }
        m
    }

    /// Overwrite every tensor from `state` (names as in [`Classifier::state`]).
    pub fn load_state(&self, state: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        self.backbone_store.load_from(state, origin)?;
        self.head_store.load_from(state, origin)
    }

    /// What a saved model records beside its tensors: the backbone and the class names.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut meta = HashMap::new();
        meta.insert("backbone".to_string(), self.arch.name().to_string());
        meta.insert("classes".to_string(), serde_json::to_string(&self.class_names).unwrap_or_default());
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_is_inverted_seeded_and_reproducible() {
        let opts = ModelOptions::new(Arch::ResNet18, vec!["a".into(), "b".into()]);
        let m = Classifier::scratch(&opts, &Device::Cpu).unwrap().with_dropout(0.25);
        let f = Tensor::ones((64, 512), DType::F32, &Device::Cpu).unwrap();
        m.seed_dropout(7, 3);
        let a = m.apply_dropout(&f).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.02, "dropped {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        m.seed_dropout(7, 3);
        let again = m.apply_dropout(&f).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, again, "same seed and epoch, same mask");
        m.seed_dropout(7, 4);
        let other = m.apply_dropout(&f).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(a, other, "another epoch, another mask");
        // A rebuilt model (next phase) draws from the same stream.
        m.seed_dropout(7, 3);
        let rebuilt = m.rebuild(Freeze::Backbone, BnMode::Frozen).unwrap();
        let b = rebuilt.apply_dropout(&f).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
