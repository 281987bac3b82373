//! The lr finder's picture: loss per step against the learning rate (log x), raw and smoothed,
//! with the suggestion marked.

use crate::train::LrFindResult;
use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Draw `r` on any plotters area (PNG, SVG, or evcxr's inline SVG).
pub fn draw_lr_find<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &LrFindResult, title: &str) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    super::ensure_font();
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting the lr finder: {e}");
    root.fill(&WHITE).map_err(e)?;
    let finite: Vec<f64> = r.points.iter().map(|p| p.smoothed).filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let first = finite.first().copied().unwrap_or(1.0);
    // Up to where divergence was declared (4x the best): the blow-up itself would squash the curve.
    let hi = finite.iter().copied().fold(first, f64::max).min(4.0 * lo.max(1e-6)).max(first);
    let (y0, y1) = if lo.is_finite() && hi > lo { (lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)) } else { (0.0, 1.0) };
    let x_end = r.points.last().map_or(r.end_lr, |p| p.lr).max(r.start_lr * 1.0001);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((r.start_lr..x_end).log_scale(), y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("learning rate (log scale)")
        .y_desc("loss per example")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let inside = |v: f64| v.is_finite() && v >= y0 && v <= y1;
    let light = RGBColor(120, 160, 230);
    chart
        .draw_series(r.points.iter().filter(|p| inside(p.loss)).map(|p| Circle::new((p.lr, p.loss), 2, light.filled())))
        .map_err(e)?
        .label("loss per step")
        .legend(move |(x, y)| Circle::new((x + 9, y), 3, light.filled()));
    chart
        .draw_series(LineSeries::new(r.points.iter().filter(|p| inside(p.smoothed)).map(|p| (p.lr, p.smoothed)), BLUE.stroke_width(2)))
        .map_err(e)?
        .label("smoothed (EMA 0.98)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    let s = r.suggestion;
    chart
        .draw_series(DashedLineSeries::new(vec![(s, y0), (s, y1)], 6, 4, RED.stroke_width(2)))
        .map_err(e)?
        .label(format!("suggested lr {s:.2e}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// `lr-find.png` (800x500).
pub fn save_lr_find(r: &LrFindResult, title: &str, png: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(png, (800, 500)).into_drawing_area();
    draw_lr_find(&root, r, title)
}
