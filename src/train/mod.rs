//! Training: optimizers with parameter groups, metrics, evaluation, early stopping, the epoch
//! loop and the recipes.

pub mod early_stopping;
pub mod evaluate;
pub mod fit;
pub mod history;
pub mod interpret;
pub mod limits;
pub mod metrics;
pub mod optim;
pub mod recipes;
pub mod lr_find;
pub mod schedule;

pub use crate::models::ParamGroup;
pub use early_stopping::{EarlyStopping, Verdict, Watch};
pub use evaluate::{evaluate, evaluate_activations, for_each_batch, Activations, ACTIVATION_CACHE_BYTES};
pub use fit::{train, train_validated, Outcome, PhaseConfig, TrainConfig};
pub use history::{EpochRecord, History};
pub use interpret::{ClassReport, Metrics, Predictions};
pub use metrics::Reduction;
pub use optim::{Optimizer, OptimizerKind};
pub use lr_find::{lr_find, LrFindConfig, LrFindResult, LrPoint, SuggestionRule};
pub use schedule::{Schedule, StepSchedule};
