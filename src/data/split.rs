//! Train / validation: a validation set carved from the training photos (stratified by class,
//! seeded), for `--val-split`. Early stopping and the choice of the kept epoch look at it; the
//! test split is only reported, never chosen on.

use super::ImageFolder;
use anyhow::bail;

/// `fraction` must lie strictly between 0 and 1 (the error names `--val-split` and the value).
pub fn check_val_fraction(fraction: f64) -> anyhow::Result<()> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--val-split {} is outside (0, 1): give the fraction of each class's training photos held out for validation, e.g. 0.2", crate::util::paths::number(fraction));
    }
    Ok(())
}

/// Hold out `fraction` of each class of `train` for validation (the same seeded, stratified
/// shuffle as [`ImageFolder::split`]). Every class must keep at least one photo on each side.
pub fn carve_validation(train: &ImageFolder, fraction: f64, seed: u64) -> anyhow::Result<(ImageFolder, ImageFolder)> {
    check_val_fraction(fraction)?;
    for (class, n) in train.classes.iter().zip(train.class_counts()) {
        // What `split(&[1 - f, f])` gives: the training part is rounded, validation takes the rest.
        let kept = ((1.0 - fraction) * n as f64).round() as usize;
        if kept == 0 || kept >= n {
            bail!(
                "class '{class}' in {} has {n} photo(s): too few to hold out {} of them for validation (each side needs at least one; add photos, change --val-split, or provide {}/val/)",
                train.root.join(class).display(),
                crate::util::paths::number(fraction),
                train.root.parent().unwrap_or(&train.root).display()
            );
        }
    }
    let mut parts = train.split(&[1.0 - fraction, fraction], seed)?.into_iter();
    match (parts.next(), parts.next()) {
        (Some(t), Some(v)) => Ok((t, v)),
        _ => bail!("splitting {} gave no validation part", crate::util::paths::shown(&train.root)),
    }
}

/// `--split 0.8,0.1,0.1`: an unsplit folder of classes (`DIR/<class>/*`) cut into training,
/// validation and test photos, each class shuffled with `seed` and cut by these fractions
/// ([`ImageFolder::split`]; validation may be 0). Recorded in a run's settings and its model
/// card, so `--resume` and `evaluate` cut the same way.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitSpec {
    pub train: f64,
    pub val: f64,
    pub test: f64,
    pub seed: u64,
}

impl SplitSpec {
    /// `"0.8,0.1,0.1"` (train, validation, test; or two values, train and test) with `seed`:
    /// each in [0, 1], train and test above 0, summing to 1. Errors name `--split`.
    pub fn parse(text: &str, seed: u64) -> anyhow::Result<Self> {
        let values: Vec<f64> = text
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--split {text}: expected fractions separated by commas, train,validation,test (e.g. 0.8,0.1,0.1) or train,test"))?;
        let (train, val, test) = match values[..] {
            [a, b, c] => (a, b, c),
            [a, c] => (a, 0.0, c),
            _ => bail!("--split {text}: give 3 fractions (train,validation,test, e.g. 0.8,0.1,0.1) or 2 (train,test)"),
        };
        let spec = Self { train, val, test, seed };
        if [train, val, test].iter().any(|f| !(0.0..=1.0).contains(f)) || train <= 0.0 || test <= 0.0 || ((train + val + test) - 1.0).abs() > 1e-6 {
            bail!("--split {text}: the fractions must lie in [0, 1], train and test above 0, and sum to 1 (they sum to {})", crate::util::paths::number(train + val + test));
        }
        Ok(spec)
    }

    /// `0.8,0.1,0.1 (seed 0)`.
    pub fn describe(&self) -> String {
        let n = crate::util::paths::number;
        format!("{},{},{} (seed {})", n(self.train), n(self.val), n(self.test), self.seed)
    }

    /// (train, validation if its fraction is above 0, test) of `all`. Every class must give
    /// each part at least one photo.
    pub fn apply(&self, all: &ImageFolder) -> anyhow::Result<(ImageFolder, Option<ImageFolder>, ImageFolder)> {
        let mut parts = all.split(&[self.train, self.val, self.test], self.seed)?;
        let (Some(test), Some(val), Some(train)) = (parts.pop(), parts.pop(), parts.pop()) else {
            bail!("splitting {} gave fewer than three parts", crate::util::paths::shown(&all.root));
        };
        let named: [(&str, &ImageFolder, bool); 3] = [("training", &train, true), ("validation", &val, self.val > 0.0), ("test", &test, true)];
        for (part, ds, wanted) in named {
            if !wanted {
                continue;
            }
            if let Some((class, n)) = all.classes.iter().zip(all.class_counts()).zip(ds.class_counts()).find(|(_, k)| *k == 0).map(|((c, n), _)| (c, n)) {
                bail!(
                    "class '{class}' in {} has {n} photo(s): --split {} leaves it no {part} photo (add photos or change the fractions)",
                    crate::util::paths::shown(&all.root),
                    self.describe()
                );
            }
        }
        Ok((train, (self.val > 0.0).then_some(val), test))
    }
}
