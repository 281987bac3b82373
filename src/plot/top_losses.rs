//! fastai's `plot_top_losses`: the photos the model got most confidently wrong, in a d2l-style
//! grid, each captioned with its true class, the predicted class and that prediction's
//! probability.

use crate::data::ImageFolder;
use crate::train::Predictions;
use anyhow::{anyhow, Context};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use std::path::Path;

const CAPTION: u32 = 44;
const GAP: u32 = 6;
/// Two title lines above the grid.
const HEAD: u32 = 50;

/// The `k` top losses of `p` (photos of `ds`, in its order) in `cols` columns of `cell` pixels.
/// With no wrong photo the picture says so.
pub fn top_losses_grid(ds: &ImageFolder, p: &Predictions, k: usize, cols: usize, cell: u32) -> anyhow::Result<RgbImage> {
    if p.len() != ds.len() {
        anyhow::bail!("{} predictions for {} photos in {}", p.len(), ds.len(), ds.root.display());
    }
    super::ensure_font();
    let worst = p.top_losses(k);
    let cols = cols.max(1).min(worst.len().max(1));
    let rows = worst.len().div_ceil(cols).max(1);
    let (w, h) = (cols as u32 * (cell + GAP) + GAP, HEAD + rows as u32 * (cell + CAPTION + GAP) + GAP);
    let mut out = RgbImage::from_pixel(w.max(420), h, Rgb([255, 255, 255]));
    for (slot, &i) in worst.iter().enumerate() {
        let img = &ds.images[i];
        let s = cell as f64 / img.width().max(img.height()).max(1) as f64;
        let (nw, nh) = (((img.width() as f64 * s).round() as u32).max(1), ((img.height() as f64 * s).round() as u32).max(1));
        let small = crate::transforms::ops::resize(img, nh, nw).context("resizing for the top-losses grid")?;
        let x = GAP + (slot % cols) as u32 * (cell + GAP) + (cell - nw) / 2;
        let y = HEAD + GAP + (slot / cols) as u32 * (cell + CAPTION + GAP) + (cell - nh) / 2;
        image::imageops::replace(&mut out, &small, x as i64, y as i64);
    }
    let (ow, oh) = out.dimensions();
    let mut buf = out.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (ow, oh)).into_drawing_area();
        let err = |e| anyhow!("drawing the top-losses captions: {e:?}");
        let title = if worst.is_empty() {
            format!("no wrong predictions among {} photos", p.len())
        } else {
            format!("top losses: the {} most confidently wrong of {} photos", worst.len(), p.len())
        };
        root.draw(&Text::new(title, (GAP as i32, 6), ("sans-serif", 16).into_font())).map_err(err)?;
        root.draw(&Text::new("true class; predicted class and its probability", (GAP as i32, 26), ("sans-serif", 13).into_font())).map_err(err)?;
        let name = |c: u32| ds.classes.get(c as usize).cloned().unwrap_or_else(|| c.to_string());
        for (slot, &i) in worst.iter().enumerate() {
            let x = (GAP + (slot % cols) as u32 * (cell + GAP)) as i32;
            let y = (HEAD + GAP + (slot / cols) as u32 * (cell + CAPTION + GAP) + cell) as i32;
            root.draw(&Text::new(format!("true: {}", name(p.labels[i])), (x, y + 4), ("sans-serif", 13).into_font())).map_err(err)?;
            let red = ("sans-serif", 13).into_font().color(&RGBColor(190, 0, 0));
            root.draw(&Text::new(format!("pred: {} {:.2}", name(p.preds[i]), p.confidence(i)), (x, y + 22), red)).map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    RgbImage::from_raw(ow, oh, buf).ok_or_else(|| anyhow!("top-losses buffer has the wrong size"))
}

/// `top-losses.png`: the 16 most confidently wrong photos, 8 per row, 150-pixel cells.
pub fn save_top_losses(ds: &ImageFolder, p: &Predictions, path: &Path) -> anyhow::Result<()> {
    top_losses_grid(ds, p, 16, 8, 150)?.save(path).with_context(|| format!("writing {}", path.display()))
}
