//! The training loop: optimizers against hand formulas, checkpoints and resume, the learning-rate
//! schedules, and the learning-rate finder.

#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod train;
mod schedules;
mod lr_find;
