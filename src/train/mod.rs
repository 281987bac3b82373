//! Training: optimizers with parameter groups, metrics, the epoch loop and the recipes.

pub mod fit;
pub mod history;
pub mod metrics;
pub mod optim;
pub mod recipes;

pub use fit::{checkpoint_dir, evaluate, train, EarlyStopping, Outcome, PhaseConfig, RunConfig};
pub use history::{EpochRecord, History};
pub use metrics::Reduction;
pub use optim::{Optimizer, OptimizerKind, ParamGroup};
