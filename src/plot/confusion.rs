//! The confusion matrix as a picture: rows are the true classes, columns the predicted ones,
//! each cell its photo count, shaded by the fraction of its row (the class's recall on the
//! diagonal), as fastai's `plot_confusion_matrix` and scikit-learn draw it.

use crate::train::Metrics;
use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Pixel size of [`draw_confusion`]'s picture for `n` classes.
pub fn confusion_size(n: usize) -> (u32, u32) {
    let cell = cell_px(n);
    // At least 640 wide, so a long title (a model's path) fits beside a 2x2 matrix.
    ((LEFT + n as u32 * cell + 30).max(640), TOP + n as u32 * cell + BOTTOM)
}

const LEFT: u32 = 190;
const TOP: u32 = 90;
const BOTTOM: u32 = 80;

fn cell_px(n: usize) -> u32 {
    (560 / n.max(1) as u32).clamp(40, 160)
}

fn short(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        name.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// Draw the matrix of `m` on any plotters area of at least [`confusion_size`] pixels.
pub fn draw_confusion<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, m: &Metrics, title: &str) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    super::ensure_font();
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting the confusion matrix: {e}");
    root.fill(&WHITE).map_err(err)?;
    let n = m.classes.len();
    let cell = cell_px(n) as i32;
    let (left, top) = (LEFT as i32, TOP as i32);
    let font = ("sans-serif", 16).into_font();
    let centered = |size: i32| ("sans-serif", size).into_font().into_text_style(root).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Center,
    ));
    root.draw(&Text::new(title.to_string(), (10, 10), ("sans-serif", 20).into_font())).map_err(err)?;
    root.draw(&Text::new(format!("{} {} photos, accuracy {:.3}", m.split, m.images, m.accuracy), (10, 36), font.clone())).map_err(err)?;
    for (t, row) in m.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let frac = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            // White to a deep blue; the count is written in white on dark cells.
            let shade = |c: u8| (255.0 - frac * (255.0 - c as f64)).round() as u8;
            let fill = RGBColor(shade(8), shade(48), shade(107));
            let (x0, y0) = (left + p as i32 * cell, top + t as i32 * cell);
            root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], fill.filled())).map_err(err)?;
            root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], BLACK.mix(0.3))).map_err(err)?;
            let ink = if frac > 0.5 { WHITE } else { BLACK };
            let size = (cell / 4).clamp(12, 28);
            root.draw(&Text::new(count.to_string(), (x0 + cell / 2, y0 + cell / 2), centered(size).color(&ink))).map_err(err)?;
        }
    }
    let max_chars = ((cell / 8) as usize).max(4);
    for (i, c) in m.classes.iter().enumerate() {
        let mid = i as i32 * cell + cell / 2;
        root.draw(&Text::new(short(&c.class, 22), (8, top + mid - 8), font.clone())).map_err(err)?;
        root.draw(&Text::new(short(&c.class, max_chars), (left + mid, top + n as i32 * cell + 16), centered(14))).map_err(err)?;
    }
    root.draw(&Text::new("true class (rows)".to_string(), (8, top - 24), font.clone())).map_err(err)?;
    root.draw(&Text::new("predicted class", (left + n as i32 * cell / 2, top + n as i32 * cell + 48), centered(16))).map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `confusion.png`.
pub fn save_confusion(m: &Metrics, title: &str, png: &Path) -> anyhow::Result<()> {
    {
        let root = BitMapBackend::new(png, confusion_size(m.classes.len())).into_drawing_area();
        draw_confusion(&root, m, title)?;
    }
    // plotters reports a failed write only on drop; check the file is there.
    std::fs::metadata(png).with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}
