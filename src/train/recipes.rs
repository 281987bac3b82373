//! The chapter's experiments as phase presets. Every number is a default the CLI can override.

use super::early_stopping::EarlyStopping;
use super::fit::PhaseConfig;
use super::metrics::Reduction;
use super::optim::OptimizerKind;
use super::schedule::Schedule;
use crate::models::{Arch, BnMode, Freeze};

/// d2l 13.2 `train_fine_tuning`: SGD (no momentum), weight decay 1e-3, lr 5e-5 on the summed
/// loss, head at 10x, everything trains, BatchNorm in train mode.
pub fn d2l_finetune(epochs: usize) -> PhaseConfig {
    PhaseConfig {
        name: "finetune".into(),
        epochs,
        optimizer: OptimizerKind::sgd(0.0, 1e-3),
        lr: 5e-5,
        head_lr_mult: 10.0,
        freeze: Freeze::Nothing,
        bn_mode: BnMode::Train,
        reduction: Reduction::Sum,
        early_stopping: None,
        schedule: Schedule::Constant,
        warmup_epochs: 0,
    }
}

/// d2l 13.2 `scratch_net`: the same network randomly initialised, lr 5e-4, one group.
pub fn d2l_scratch(epochs: usize) -> PhaseConfig {
    PhaseConfig { name: "scratch".into(), lr: 5e-4, head_lr_mult: 1.0, ..d2l_finetune(epochs) }
}

/// d2l 13.2 exercise 3: freeze the pretrained backbone, train the head only (at 10x lr).
pub fn d2l_freeze(epochs: usize) -> PhaseConfig {
    PhaseConfig { name: "freeze".into(), freeze: Freeze::Backbone, ..d2l_finetune(epochs) }
}

/// The Keras lesson: (1) Adam 1e-3 on the head, backbone frozen with BatchNorm in inference
/// mode; (2) the top blocks unfrozen at 1e-5 (BatchNorm still frozen), early stopping on the
/// test loss with the best weights restored.
pub fn keras_two_phase(arch: Arch, head_epochs: usize, fine_epochs: usize, unfreeze_from: Option<String>, patience: usize) -> Vec<PhaseConfig> {
    let head = PhaseConfig {
        name: "head".into(),
        epochs: head_epochs,
        optimizer: OptimizerKind::adam(),
        lr: 1e-3,
        head_lr_mult: 1.0,
        freeze: Freeze::Backbone,
        bn_mode: BnMode::Frozen,
        reduction: Reduction::Mean,
        early_stopping: None,
        schedule: Schedule::Constant,
        warmup_epochs: 0,
    };
    let fine = PhaseConfig {
        name: "fine-tune".into(),
        epochs: fine_epochs,
        lr: 1e-5,
        freeze: Freeze::Below(unfreeze_from.unwrap_or_else(|| arch.default_unfreeze_from())),
        early_stopping: Some(EarlyStopping::new(patience)),
        ..head.clone()
    };
    vec![head, fine]
}
