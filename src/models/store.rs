//! Parameter stores: a `VarMap` plus the rules for creating, loading and freezing its tensors.
//!
//! The backbone and the head each own one store, so each can get its own learning rate.
//! Models are built through a [`VarBuilder`] backed by a store; the backend decides per tensor
//! name whether to take a pretrained value (strictly: a missing tensor or a wrong shape is an
//! error naming it), draw a seeded random init, and whether to hand out a *tracked* variable
//! (trainable) or a *detached* view of the same storage (frozen: no gradient, no backward work).

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Names of non-trainable state (BatchNorm running statistics).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// Decides, from a tensor's full name, whether it is frozen.
pub type FreezeFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Tensors by name with where they came from (a file path, for error messages): the values a
/// pretrained store takes its tensors from.
#[derive(Clone)]
pub struct NamedTensors {
    pub tensors: Arc<HashMap<String, Tensor>>,
    pub origin: String,
}

impl NamedTensors {
    pub fn new(tensors: HashMap<String, Tensor>, origin: impl Into<String>) -> Self {
        Self { tensors: Arc::new(tensors), origin: origin.into() }
    }

    /// `tensors[name]`, checked against `shape`: a missing name or a wrong shape is an error
    /// naming the tensor and the origin.
    pub fn get_checked(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        check_tensor(self.tensors.get(name), name, shape, &self.origin)
    }
}

/// Parameters sharing one learning rate (the optimizers take a list of these).
#[derive(Clone)]
pub struct ParamGroup {
    pub name: String,
    /// The learning rate of the next step (the schedule sets it: base lr x `lr_mult` x factor).
    pub lr: f64,
    /// This group's multiple of the phase's learning rate (d2l: 10 for the head, 1 elsewhere).
    pub lr_mult: f64,
    pub params: Vec<(String, Var)>,
}

/// The one wording of "no tensor named" / "wrong shape" errors.
fn check_tensor<'a>(t: Option<&'a Tensor>, name: &str, shape: &[usize], origin: &str) -> Result<&'a Tensor> {
    let t = t.ok_or_else(|| candle_core::Error::Msg(format!("{origin}: no tensor named '{name}' (expected shape {shape:?})")))?;
    if t.dims() != shape {
        candle_core::bail!("{origin}: tensor '{name}' has shape {:?}, expected {shape:?}", t.dims());
    }
    Ok(t)
}

/// A named group of tensors (backbone or head) kept in one `VarMap`.
#[derive(Clone)]
pub struct ParamStore {
    pub varmap: VarMap,
    rng: Arc<Mutex<ChaCha8Rng>>,
    pretrained: Option<NamedTensors>,
    dtype: DType,
    device: Device,
}

impl ParamStore {
    /// A store whose new tensors get seeded random initial values.
    pub fn random(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            varmap: VarMap::new(),
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            pretrained: None,
            dtype,
            device: device.clone(),
        }
    }

    /// A store whose tensors must all come from `pretrained`.
    pub fn pretrained(pretrained: NamedTensors, dtype: DType, device: &Device) -> Self {
        let mut s = Self::random(0, dtype, device);
        s.pretrained = Some(pretrained);
        s
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A `VarBuilder` over this store. `frozen(name)` tensors come back detached.
    pub fn builder(&self, frozen: FreezeFn) -> VarBuilder<'static> {
        let backend = StoreBackend { store: self.clone(), frozen };
        VarBuilder::from_backend(Box::new(backend), self.dtype, self.device.clone())
    }

    /// The variable stored under `name`, if any (BatchNorm uses this to update running stats).
    pub fn var(&self, name: &str) -> Option<Var> {
        self.varmap.data().lock().ok()?.get(name).cloned()
    }

    /// All (name, var) pairs, sorted by name for deterministic iteration.
    pub fn named_vars(&self) -> BTreeMap<String, Var> {
        match self.varmap.data().lock() {
            Ok(d) => d.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Trainable (name, var) pairs: neither buffers nor frozen.
    pub fn trainable(&self, frozen: &FreezeFn) -> Vec<(String, Var)> {
        self.named_vars().into_iter().filter(|(n, _)| !is_buffer(n) && !frozen(n)).collect()
    }

    /// Number of scalar parameters (buffers excluded); `frozen` filters when given.
    pub fn count(&self, frozen: Option<&FreezeFn>) -> usize {
        self.named_vars()
            .iter()
            .filter(|(n, _)| !is_buffer(n) && frozen.is_none_or(|f| !f(n)))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Overwrite every tensor of this store with the same-named one in `values`.
    /// A missing name or a wrong shape is an error naming the tensor and `origin`.
    pub fn load_from(&self, values: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        for (name, var) in self.named_vars() {
            let src = check_tensor(values.get(&name), &name, var.dims(), origin)?;
            // A copy: `set` refuses a tensor that shares the variable's own storage.
            var.set(&src.to_dtype(var.dtype())?.to_device(var.device())?.copy()?)?;
        }
        Ok(())
    }
}

struct StoreBackend {
    store: ParamStore,
    frozen: FreezeFn,
}

impl StoreBackend {
    fn initial_value(&self, shape: &Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(p) = &self.store.pretrained {
            return p.get_checked(name, shape.dims())?.to_dtype(dtype)?.to_device(dev);
        }
        let mut rng = self.store.rng.lock().map_err(|_| candle_core::Error::Msg("rng poisoned".into()))?;
        seeded_init(&mut rng, shape, init)?.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for StoreBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let existing = self.store.var(name);
        let var = match existing {
            Some(v) => {
                if v.shape() != &s {
                    candle_core::bail!("parameter '{name}' exists with shape {:?}, asked for {:?}", v.dims(), s.dims());
                }
                v
            }
            None => {
                let v = Var::from_tensor(&self.initial_value(&s, name, h, dtype, dev)?)?;
                let mut data = self.store.varmap.data().lock().map_err(|_| candle_core::Error::Msg("varmap poisoned".into()))?;
                data.insert(name.to_string(), v.clone());
                v
            }
        };
        // Buffers and frozen tensors share storage with the variable but are not tracked.
        if is_buffer(name) || (self.frozen)(name) {
            Ok(var.as_tensor().detach())
        } else {
            Ok(var.as_tensor().clone())
        }
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        self.store
            .var(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter named '{name}'")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.var(name).is_some()
    }
}

/// Candle's `Init`, drawn from our seeded generator (candle's CPU RNG cannot be seeded).
fn seeded_init(rng: &mut ChaCha8Rng, shape: &Shape, init: Init) -> Result<Tensor> {
    let n = shape.elem_count();
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(lo..up) as f32).collect()
    };
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                (mean + std * z) as f32
            })
            .collect()
    };
    let values = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan_for(fan, shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(rng, -b, b)
                }
                NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    };
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

fn fan_for(fan: FanInOut, shape: &Shape) -> usize {
    let d = shape.dims();
    let receptive: usize = d.iter().skip(2).product();
    match (fan, d.len()) {
        (_, 0) => 1,
        (_, 1) => d[0],
        (FanInOut::FanIn, _) => d[1] * receptive,
        (FanInOut::FanOut, _) => d[0] * receptive,
    }
}

/// Xavier/Glorot uniform bound for a `[fan_out, fan_in]` weight (PyTorch's `xavier_uniform_`).
pub fn xavier_uniform(fan_in: usize, fan_out: usize) -> Init {
    let b = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// Kaiming-normal, fan-out, ReLU gain: torchvision's ResNet convolution init.
pub const KAIMING_FAN_OUT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};
