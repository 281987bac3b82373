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
