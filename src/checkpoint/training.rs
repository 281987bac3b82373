//! The checkpoint a training run writes after every epoch, in `OUT/checkpoint/`: the model,
//! the best weights so far (early stopping), the optimizer's state, and the run's own state
//! (`state.json`, whatever the training loop serialises), so that a later run resumes exactly.
//!
//! One checkpoint is one atomic unit. Each save writes its tensor files under new names
//! (`model-G.safetensors`, `optimizer-G.safetensors`, `best-G.safetensors` for generation G),
//! each through temp + fsync + rename, and then `state.json`, which names them: that one rename
//! is the commit. A kill at any point leaves the previous `state.json` naming the previous,
//! complete files; files of other generations and temporary files are removed on the next
//! load or save. (Before, the three files were renamed one by one: a kill between the renames
//! paired a new model with an old state.json, and the resume retrained an epoch on weights that
//! already held it.)

use super::atomic::{fault_point, remove_leftovers, write_atomic};
pub use super::atomic::write_json_atomic;
use super::model::save_model;
use super::weights::{read_tensors, save_safetensors};
use crate::models::Classifier;
use anyhow::Context;
use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The files of a run's checkpoint folder.
#[derive(Clone, Debug)]
pub struct RunFiles {
    pub dir: PathBuf,
}

/// The tensor files of one checkpoint generation, as named in `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    pub model: String,
    pub optimizer: Option<String>,
    pub best: Option<String>,
}

/// `state.json`: the run's own state plus the manifest (absent in checkpoints of earlier
/// versions, whose files had fixed names).
#[derive(Serialize, Deserialize)]
struct Saved<S> {
    #[serde(default)]
    checkpoint: Option<Manifest>,
    #[serde(flatten)]
    state: S,
}

impl RunFiles {
    /// `OUT/checkpoint`.
    pub fn under(out: &Path) -> Self {
        Self { dir: out.join("checkpoint") }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn create(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))
    }

    /// The committed manifest: the one `state.json` names, or the fixed names of checkpoints
    /// written before manifests; `None` without a checkpoint.
    pub fn manifest(&self) -> anyhow::Result<Option<Manifest>> {
        if !self.state().is_file() {
            return Ok(None);
        }
        let s = std::fs::read_to_string(self.state()).with_context(|| format!("reading {}", self.state().display()))?;
        let saved: Saved<serde_json::Value> = serde_json::from_str(&s).with_context(|| format!("parsing {}", self.state().display()))?;
        Ok(Some(saved.checkpoint.unwrap_or_else(|| Manifest {
            generation: 0,
            model: "model.safetensors".into(),
            optimizer: self.dir.join("optimizer.safetensors").is_file().then(|| "optimizer.safetensors".into()),
            best: self.dir.join("best.safetensors").is_file().then(|| "best.safetensors".into()),
        })))
    }

    /// Remove what an interrupted save left: temporary files, and tensor files that the
    /// committed `state.json` does not name.
    pub fn clean(&self) -> anyhow::Result<()> {
        remove_leftovers(&self.dir);
        let keep: Vec<String> = match self.manifest()? {
            Some(m) => [Some(m.model), m.optimizer, m.best].into_iter().flatten().collect(),
            None => vec![],
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(()) };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".safetensors") && !keep.contains(&name) {
                std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
        Ok(())
    }

    /// Save a checkpoint: the model, the optimizer's state (when it has any: SGD without
    /// momentum has none), the best weights (when early stopping kept some) and the run's
    /// state, committed by the rename of `state.json`. Fault points (see
    /// [`super::atomic::fault_point`]): `model`, `optimizer`, `best`, `state-temp` (the new
    /// state.json flushed, not renamed), `state` (committed, old files not yet removed).
    pub fn save<S: Serialize>(
        &self,
        model: &Classifier,
        optimizer: Option<&HashMap<String, Tensor>>,
        best: Option<&HashMap<String, Tensor>>,
        state: &S,
    ) -> anyhow::Result<()> {
        self.create()?;
        let g = self.manifest()?.map_or(1, |m| m.generation + 1);
        let manifest = Manifest {
            generation: g,
            model: format!("model-{g}.safetensors"),
            optimizer: optimizer.filter(|o| !o.is_empty()).map(|_| format!("optimizer-{g}.safetensors")),
            best: best.map(|_| format!("best-{g}.safetensors")),
        };
        save_model(model, &self.dir.join(&manifest.model))?;
        fault_point("model");
        if let (Some(opt), Some(name)) = (optimizer, &manifest.optimizer) {
            save_safetensors(opt, HashMap::new(), &self.dir.join(name))?;
            fault_point("optimizer");
        }
        if let (Some(b), Some(name)) = (best, &manifest.best) {
            save_safetensors(b, HashMap::new(), &self.dir.join(name))?;
            fault_point("best");
        }
        let json = serde_json::to_string_pretty(&Saved { checkpoint: Some(manifest), state })?;
        if std::env::var(super::atomic::FAULT_ENV).is_ok_and(|v| v.starts_with("state-temp")) {
            // Leave the flushed temporary state.json behind, as a kill before its rename would.
            std::fs::write(super::atomic::temp_path(&self.state()), &json)?;
            fault_point("state-temp");
        }
        write_atomic(&self.state(), json.as_bytes())?;
        fault_point("state");
        self.clean()
    }

    /// The saved run state, with the saved model loaded into `model`; `None` when there is no
    /// checkpoint yet. Leftovers of an interrupted save are removed first.
    pub fn load<S: DeserializeOwned>(&self, model: &Classifier) -> anyhow::Result<Option<S>> {
        let state = self.load_state()?;
        if state.is_some() {
            self.load_weights(model)?;
        }
        Ok(state)
    }

    /// The saved run state alone (nothing read into a model yet, so a caller can compare the
    /// run's settings before the tensors), or `None` without a checkpoint. Leftovers of an
    /// interrupted save are removed first.
    pub fn load_state<S: DeserializeOwned>(&self) -> anyhow::Result<Option<S>> {
        if self.manifest()?.is_none() {
            return Ok(None);
        }
        self.clean()?;
        let s = std::fs::read_to_string(self.state()).with_context(|| format!("reading {}", self.state().display()))?;
        let saved: Saved<S> = serde_json::from_str(&s).with_context(|| format!("parsing {}", self.state().display()))?;
        Ok(Some(saved.state))
    }

    /// Load the committed checkpoint's model weights into `model`.
    pub fn load_weights(&self, model: &Classifier) -> anyhow::Result<()> {
        let Some(m) = self.manifest()? else { anyhow::bail!("{} holds no checkpoint", self.dir.display()) };
        let path = self.dir.join(&m.model);
        let tensors = read_tensors(&path)?;
        model.load_state(&tensors, &path.display().to_string())?;
        Ok(())
    }

    /// The optimizer's saved state, when there is one.
    pub fn load_optimizer(&self) -> anyhow::Result<Option<HashMap<String, Tensor>>> {
        self.load_named(|m| m.optimizer)
    }

    /// The best weights so far, when there are any.
    pub fn load_best(&self) -> anyhow::Result<Option<HashMap<String, Tensor>>> {
        self.load_named(|m| m.best)
    }

    fn load_named(&self, pick: impl Fn(Manifest) -> Option<String>) -> anyhow::Result<Option<HashMap<String, Tensor>>> {
        match self.manifest()?.and_then(pick) {
            Some(name) => Ok(Some(read_tensors(&self.dir.join(name))?)),
            None => Ok(None),
        }
    }
}
