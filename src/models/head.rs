//! What trains and how the new head starts: [`Freeze`] (none, all, or every block below one)
//! and [`HeadInit`] (Xavier, ImageNet's whole head, or d2l's class-934 row).

use super::store::FreezeFn;
use super::Arch;
use crate::util::imagenet::HOTDOG_CLASS;
use anyhow::bail;
use std::sync::Arc;

/// Which part of the backbone is frozen (no gradients, no optimizer updates).
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freeze {
    /// Everything trains (d2l's fine-tuning).
    #[default]
    Nothing,
    /// Only the head trains (feature extraction).
    Backbone,
    /// Every block before the named one is frozen, e.g. `Below("layer3")` trains layer3, layer4, head.
    Below(String),
}

impl std::str::FromStr for Freeze {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "none" | "nothing" => Freeze::Nothing,
            "backbone" | "all" => Freeze::Backbone,
            block => Freeze::Below(block.to_string()),
        })
    }
}

impl std::fmt::Display for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freeze::Nothing => f.write_str("none"),
            Freeze::Backbone => f.write_str("backbone"),
            Freeze::Below(b) => f.write_str(b),
        }
    }
}

impl Freeze {
    /// The predicate over backbone tensor names for `arch`.
    pub fn predicate(&self, arch: Arch) -> anyhow::Result<FreezeFn> {
        Ok(match self {
            Freeze::Nothing => Arc::new(|_: &str| false),
            Freeze::Backbone => Arc::new(|_: &str| true),
            Freeze::Below(block) => {
                let blocks = arch.blocks();
                let Some(cut) = blocks.iter().position(|b| b == block) else {
                    bail!("{arch} has no block '{block}' to freeze below (blocks: {})", blocks.join(", "))
                };
                let frozen: Vec<String> = blocks[..cut].to_vec();
                Arc::new(move |name: &str| frozen.contains(&arch.block_of(name)))
            }
        })
    }

    /// How many leading steps of `arch`'s forward pass ([`Arch::steps`]) hold only frozen
    /// blocks: with BatchNorm `Frozen` as well their output never changes while training.
    /// Every step for a frozen backbone (the pooled features), none when nothing is frozen.
    pub fn fixed_steps(&self, arch: Arch) -> usize {
        let steps = arch.steps();
        let cut = match self {
            Freeze::Nothing => 0,
            Freeze::Backbone => return steps.len(),
            Freeze::Below(block) => arch.blocks().iter().position(|b| b == block).unwrap_or(0),
        };
        // Blocks run by the first k steps, for k = 1, 2, ...: a step is fixed while they are all below the cut.
        steps
            .iter()
            .scan(0, |ran, s| {
                *ran += s.len();
                Some(*ran)
            })
            .take_while(|&ran| ran <= cut)
            .count()
    }
}

/// How the new head starts.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadInit {
    /// Xavier-uniform weights, PyTorch-default bias (d2l's `nn.init.xavier_uniform_`).
    Xavier,
    /// The pretrained ImageNet head, kept whole (1000 classes).
    ImageNet,
    /// Xavier, then the row of class `target` copied from ImageNet row `imagenet_class`
    /// (d2l 13.2 exercise 4: start the "hotdog" output from ImageNet's class 934).
    ImageNetRow { imagenet_class: usize, target: usize },
}

impl HeadInit {
    /// d2l 13.2 exercise 4: the hot-dog class (`positive`, or the folder named like "hotdog")
    /// starts from ImageNet's row 934, the other rows from Xavier.
    pub fn hotdog(classes: &[String], positive: Option<&str>) -> anyhow::Result<Self> {
        Ok(HeadInit::ImageNetRow { imagenet_class: HOTDOG_CLASS, target: positive_class(classes, positive)? })
    }
}

/// The folder that holds the hot dogs: `name`, or the one whose name, lower-cased without
/// `_`/`-`, is `hotdog` (d2l's `hotdog`, Kaggle's `hot_dog`).
pub fn positive_class(classes: &[String], name: Option<&str>) -> anyhow::Result<usize> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    let found = match name {
        Some(n) => classes.iter().position(|c| c == n),
        None => classes.iter().position(|c| norm(c) == "hotdog"),
    };
    match found {
        Some(i) => Ok(i),
        None => bail!(
            "no class folder {} among {:?} (pass --positive-class NAME)",
            name.map(|n| format!("'{n}'")).unwrap_or_else(|| "named like 'hotdog'".into()),
            classes
        ),
    }
}

