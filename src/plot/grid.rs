//! A grid of images, each fitted into a square cell (d2l's `show_images`).

use anyhow::Context;
use image::{Rgb, RgbImage};
use std::path::Path;

/// `images` laid out row by row in `cols` columns, each fitted (aspect kept) into `cell` pixels.
pub fn image_grid(images: &[&RgbImage], cols: usize, cell: u32) -> anyhow::Result<RgbImage> {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let gap = 4u32;
    let mut out = RgbImage::from_pixel(cols as u32 * (cell + gap) + gap, rows as u32 * (cell + gap) + gap, Rgb([255, 255, 255]));
    for (i, img) in images.iter().enumerate() {
        let (w, h) = img.dimensions();
        let s = cell as f64 / w.max(h).max(1) as f64;
        let (nw, nh) = (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1));
        let small = crate::transforms::ops::resize(img, nh, nw).context("resizing for the grid")?;
        let x = gap + (i % cols) as u32 * (cell + gap) + (cell - nw) / 2;
        let y = gap + (i / cols) as u32 * (cell + gap) + (cell - nh) / 2;
        image::imageops::replace(&mut out, &small, x as i64, y as i64);
    }
    Ok(out)
}

/// d2l's peek: the first 8 images of the first class above the last 8 of the last class.
pub fn peek_grid(ds: &crate::data::ImageFolder, cell: u32) -> anyhow::Result<RgbImage> {
    let last = (ds.classes.len() - 1) as u32;
    let first: Vec<&RgbImage> = (0..ds.len()).filter(|&i| ds.labels[i] == 0).take(8).map(|i| ds.images[i].as_ref()).collect();
    let mut tail: Vec<&RgbImage> = (0..ds.len()).rev().filter(|&i| ds.labels[i] == last).take(8).map(|i| ds.images[i].as_ref()).collect();
    tail.reverse();
    let all: Vec<&RgbImage> = first.into_iter().chain(tail).collect();
    image_grid(&all, 8, cell)
}

/// [`peek_grid`] with 160-pixel cells, written to `path`.
pub fn save_peek(ds: &crate::data::ImageFolder, path: &Path) -> anyhow::Result<()> {
    let grid = peek_grid(ds, 160)?;
    grid.save(path).with_context(|| format!("writing {}", path.display()))
}
