//! Loss and accuracy per epoch, side by side, with phase switches marked.

use crate::train::History;
use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
    y_range: (f64, f64),
    x_max: f64,
    switches: &[(usize, String)],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.5f64..x_max + 0.5, y_range.0..y_range.1)
        .map_err(|e| anyhow!("plotting: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels((x_max as usize).clamp(2, 12))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("plotting: {e}"))?;
    for (name, color, pts) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("plotting: {e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("plotting: {e}"))?;
    }
    for (epoch, phase) in switches {
        let x = *epoch as f64 - 0.5;
        chart
            .draw_series(DashedLineSeries::new(vec![(x, y_range.0), (x, y_range.1)], 6, 4, BLACK.mix(0.6).stroke_width(1)))
            .map_err(|e| anyhow!("plotting: {e}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {phase}"),
                (x, y_range.1 - (y_range.1 - y_range.0) * 0.04),
                ("sans-serif", 14),
            )))
            .map_err(|e| anyhow!("plotting: {e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(legend)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("plotting: {e}"))?;
    Ok(())
}

/// Draw the curves of `history` on any plotters area (PNG, SVG, or evcxr's inline SVG).
pub fn draw_curves<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, history: &History, title: &str) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    super::ensure_font();
    root.fill(&WHITE).map_err(|e| anyhow!("plotting: {e}"))?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(|e| anyhow!("plotting: {e}"))?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let r = &history.records;
    let x_max = r.len().max(1) as f64;
    let pts = |f: fn(&crate::train::EpochRecord) -> f64| r.iter().map(|e| (e.epoch as f64, f(e))).collect::<Vec<_>>();
    let switches = history.phase_starts();
    let loss_max = r.iter().flat_map(|e| [e.loss, e.test_loss, e.val_loss.unwrap_or(0.0)]).filter(|v| v.is_finite()).fold(0.1f64, f64::max) * 1.1;
    // Validation (what early stopping watches) in green, only for the epochs that have it.
    const GREEN: RGBColor = RGBColor(0, 150, 0);
    let opt_pts = |f: fn(&crate::train::EpochRecord) -> Option<f64>| r.iter().filter_map(|e| f(e).map(|v| (e.epoch as f64, v))).collect::<Vec<_>>();
    let mut loss_series = vec![("train loss", BLUE, pts(|e| e.loss)), ("test loss", RED, pts(|e| e.test_loss))];
    let mut acc_series = vec![("train acc", BLUE, pts(|e| e.train_acc)), ("test acc", RED, pts(|e| e.test_acc))];
    if r.iter().any(|e| e.val_loss.is_some()) {
        loss_series.push(("val loss", GREEN, opt_pts(|e| e.val_loss)));
        acc_series.push(("val acc", GREEN, opt_pts(|e| e.val_acc)));
    }
    panel(&left, "loss", &loss_series, (0.0, loss_max), x_max, &switches, SeriesLabelPosition::UpperRight)?;
    panel(
        &right,
        "accuracy",
        &acc_series,
        (0.0, 1.0),
        x_max,
        &switches,
        SeriesLabelPosition::LowerRight,
    )?;
    root.present().map_err(|e| anyhow!("plotting: {e}"))?;
    Ok(())
}

/// Several runs on one chart (e.g. fine-tuning against training from scratch): training loss
/// and test accuracy per epoch, one colour per run.
pub fn draw_comparison<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[(&str, &History)], title: &str) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    const COLORS: [RGBColor; 6] = [BLUE, RED, RGBColor(0, 150, 0), MAGENTA, RGBColor(230, 140, 0), BLACK];
    super::ensure_font();
    root.fill(&WHITE).map_err(|e| anyhow!("plotting: {e}"))?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(|e| anyhow!("plotting: {e}"))?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let x_max = runs.iter().map(|(_, h)| h.records.len()).max().unwrap_or(1).max(1) as f64;
    let series = |f: fn(&crate::train::EpochRecord) -> f64| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, (name, h))| (*name, COLORS[i % COLORS.len()], h.records.iter().map(|e| (e.epoch as f64, f(e))).collect()))
            .collect()
    };
    let loss = series(|e| e.loss);
    let acc = series(|e| e.test_acc);
    let loss_max = loss.iter().flat_map(|(_, _, p)| p.iter().map(|q| q.1)).filter(|v| v.is_finite()).fold(0.1f64, f64::max) * 1.1;
    panel(&left, "train loss", &loss, (0.0, loss_max), x_max, &[], SeriesLabelPosition::UpperRight)?;
    panel(&right, "test accuracy", &acc, (0.0, 1.0), x_max, &[], SeriesLabelPosition::LowerRight)?;
    root.present().map_err(|e| anyhow!("plotting: {e}"))?;
    Ok(())
}

/// `curves.png` and `curves.svg` (1000x400).
pub fn save_curves(history: &History, title: &str, png: &Path, svg: &Path) -> anyhow::Result<()> {
    {
        let root = BitMapBackend::new(png, (1000, 400)).into_drawing_area();
        draw_curves(&root, history, title)?;
    }
    let root = SVGBackend::new(svg, (1000, 400)).into_drawing_area();
    draw_curves(&root, history, title)
}
