//! The checkpoint a training run writes after every epoch, in `OUT/checkpoint/`: the model,
//! the best weights so far (early stopping), the optimizer's state, and the run's own state
//! (`state.json`, whatever the training loop serialises), so that a later run resumes exactly.

use super::model::save_model;
use super::weights::{read_tensors, save_safetensors};
use crate::models::Classifier;
use anyhow::Context;
use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The files of a run's checkpoint folder.
#[derive(Clone, Debug)]
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    /// `OUT/checkpoint`.
    pub fn under(out: &Path) -> Self {
        Self { dir: out.join("checkpoint") }
    }

    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.dir.join("optimizer.safetensors")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn create(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))
    }

    /// The model, the optimizer's state (when given) and the run's state, each written to a
    /// temporary file and renamed.
    pub fn save<S: Serialize>(&self, model: &Classifier, optimizer: Option<&HashMap<String, Tensor>>, state: &S) -> anyhow::Result<()> {
        save_model(model, &self.model())?;
        if let Some(opt) = optimizer {
            save_safetensors(opt, HashMap::new(), &self.optimizer())?;
        }
        write_json_atomic(&self.state(), state)
    }

    pub fn save_best(&self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        save_safetensors(tensors, HashMap::new(), &self.best())
    }

    /// The saved run state, with the saved model loaded into `model`; `None` when there is no
    /// checkpoint yet.
    pub fn load<S: DeserializeOwned>(&self, model: &Classifier) -> anyhow::Result<Option<S>> {
        if !self.state().is_file() {
            return Ok(None);
        }
        let s = std::fs::read_to_string(self.state()).with_context(|| format!("reading {}", self.state().display()))?;
        let state: S = serde_json::from_str(&s).with_context(|| format!("parsing {}", self.state().display()))?;
        let tensors = read_tensors(&self.model())?;
        model.load_state(&tensors, &self.model().display().to_string())?;
        Ok(Some(state))
    }

    /// The optimizer's saved state, when there is one.
    pub fn load_optimizer(&self) -> anyhow::Result<Option<HashMap<String, Tensor>>> {
        self.optimizer().is_file().then(|| read_tensors(&self.optimizer())).transpose()
    }

    /// The best weights so far, when there are any.
    pub fn load_best(&self) -> anyhow::Result<Option<HashMap<String, Tensor>>> {
        self.best().is_file().then(|| read_tensors(&self.best())).transpose()
    }
}

/// Serialise `value` as pretty JSON to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write_json_atomic<S: Serialize>(path: &Path, value: &S) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
