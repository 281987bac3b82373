//! What the Evcxr notebooks need beyond the library: pictures and tables shown inline (Evcxr
//! turns `EVCXR_BEGIN_CONTENT <mime>` ... `EVCXR_END_CONTENT` on stdout into a cell output),
//! the quick/full setting, and where the photos, the weights and the runs live.

use crate::checkpoint::{default_weights, WeightsSource};
use crate::models::{Arch, HeadInit};
use crate::plot::{confusion_size, draw_comparison, draw_confusion, draw_curves, top_losses_grid};
use crate::train::{History, Metrics, PhaseConfig, Predictions};
use crate::{Augment, Experiment, ModelInit};
use anyhow::{anyhow, Context};
use base64::Engine;
use image::RgbImage;
use plotters::prelude::*;
use std::io::Write;
use std::path::PathBuf;

/// How much work a notebook does. `Quick` lets a 2-core laptop run each notebook in a few
/// minutes (small images, a subset, few epochs); `Full` is the chapter's setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Quick,
    Full,
}

impl Setting {
    /// `WORKBOOK_SETTING=quick|full` if set (how `just notebooks-check` forces quick mode),
    /// else `default`.
    pub fn from_env_or(default: Setting) -> Setting {
        match std::env::var("WORKBOOK_SETTING").map(|v| v.to_ascii_lowercase()) {
            Ok(v) if v == "full" => Setting::Full,
            Ok(v) if v == "quick" => Setting::Quick,
            _ => default,
        }
    }

    pub fn image_size(self) -> u32 {
        match self {
            Setting::Quick => 128,
            Setting::Full => 224,
        }
    }

    pub fn batch_size(self) -> usize {
        match self {
            Setting::Quick => 32,
            Setting::Full => 128,
        }
    }

    /// Images per class kept from each split (`None`: all 249/250 of them).
    pub fn limit_per_class(self) -> Option<usize> {
        match self {
            Setting::Quick => Some(64),
            Setting::Full => None,
        }
    }

    /// `quick` epochs in quick mode, `full` otherwise.
    pub fn epochs(self, quick: usize, full: usize) -> usize {
        match self {
            Setting::Quick => quick,
            Setting::Full => full,
        }
    }

    /// `runs/notebooks/<quick|full>/<name>` under the project: notebooks that reuse an earlier
    /// notebook's run (05 compares with 04) find it there, never mixing the two settings.
    pub fn run_dir(self, name: &str) -> PathBuf {
        let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' }).collect();
        let setting = match self {
            Setting::Quick => "quick",
            Setting::Full => "full",
        };
        project_dir().join("runs/notebooks").join(setting).join(slug)
    }

    /// An experiment on the hot-dog photos with this setting's sizes; its outputs go to
    /// [`Setting::run_dir`]. Change any field before calling [`crate::fine_tune`].
    pub fn experiment(self, name: &str, arch: Arch, init: ModelInit, phases: Vec<PhaseConfig>) -> anyhow::Result<Experiment> {
        Ok(Experiment {
            title: format!("{name}: {arch}, {}px", self.image_size()),
            data: hotdog_data()?,
            arch,
            init,
            phases,
            batch_size: self.batch_size(),
            image_size: self.image_size(),
            augment: Augment::D2l,
            seed: 0,
            device: device()?,
            out: Some(self.run_dir(name)),
            resume: false,
            // Re-executing a notebook retrains into the same folder.
            overwrite: true,
            progress: true,
            limit_per_class: self.limit_per_class(),
            cache_dir: None,
            head_init: HeadInit::Xavier,
            val_split: None,
            split: None,
            kernels: kernels()?,
        })
    }
}

/// The workbook's folder (where `Cargo.toml` is), wherever the notebook runs from.
pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first call of every notebook: works from the workbook's folder (so `runs/`, `.cache/`
/// and `../shared/` mean what they mean for the CLI, and printed paths are relative to the
/// project), keeps freed memory for reuse ([`crate::keep_freed_memory`]), checks
/// `WORKBOOK_PRECISION` ([`kernels`]), and returns the setting (`WORKBOOK_SETTING`, else
/// `default`).
pub fn start(default: Setting) -> anyhow::Result<Setting> {
    crate::keep_freed_memory();
    std::env::set_current_dir(project_dir()).with_context(|| format!("entering {}", project_dir().display()))?;
    kernels()?;
    Ok(Setting::from_env_or(default))
}

/// The CPU kernels of the notebooks' experiments: the arithmetic from `WORKBOOK_PRECISION`
/// (`f32`, the default, or `bf16`: see [`crate::ops::Precision`]), refused on a CPU that cannot
/// run it.
pub fn kernels() -> anyhow::Result<crate::ops::Kernels> {
    use crate::util::Choice;
    let precision = match std::env::var("WORKBOOK_PRECISION") {
        Ok(p) => crate::ops::Precision::from_name(&p).map_err(|e| anyhow!("WORKBOOK_PRECISION={p}: expected {}", e.expected))?,
        Err(_) => crate::ops::Precision::F32,
    };
    let k = crate::ops::Kernels::with_precision(precision);
    k.check().context("WORKBOOK_PRECISION")?;
    Ok(k)
}

/// `path` as the notebooks print it: relative to the working folder (the project, after [`start`]).
pub fn shown(path: &std::path::Path) -> String {
    crate::util::paths::shown(path)
}

/// The hot-dog photos: `WORKBOOK_DATA` if set, else the shared Kaggle copy beside the project,
/// else d2l's `hotdog.zip`, downloaded once into `.cache/data` (SHA-1 checked).
pub fn hotdog_data() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("WORKBOOK_DATA") {
        return Ok(PathBuf::from(d));
    }
    let shared = project_dir().join("../shared/data/hotdog-seefood");
    if shared.join("train").is_dir() {
        return Ok(shared);
    }
    crate::data::hotdog(&project_dir().join(".cache/data")).context("getting the d2l hot-dog data (set WORKBOOK_DATA to a local copy)")
}

/// The device the notebooks train on: `WORKBOOK_DEVICE` (`cpu`, `cuda`, `cuda:N`), else the CPU.
pub fn device() -> anyhow::Result<candle_core::Device> {
    match std::env::var("WORKBOOK_DEVICE") {
        Ok(d) => crate::parse_device(&d).context("WORKBOOK_DEVICE"),
        Err(_) => Ok(candle_core::Device::Cpu),
    }
}

/// The backbone's pretrained ImageNet weights ([`default_weights`]); a local file must exist.
pub fn pretrained(arch: Arch) -> anyhow::Result<WeightsSource> {
    let source = default_weights(arch);
    if let WeightsSource::File(path) = &source {
        if !path.is_file() {
            anyhow::bail!("{} is missing: run `bash tools/fetch-weights.sh` in the workbook's folder", crate::util::paths::shown(path));
        }
    }
    Ok(source)
}

/// Write one Evcxr content block (`mime` and the base64 of `bytes` for binary types).
pub fn write_content(out: &mut impl Write, mime: &str, bytes: &[u8]) -> std::io::Result<()> {
    let body = if mime.starts_with("text/") || mime.ends_with("+xml") {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    writeln!(out, "EVCXR_BEGIN_CONTENT {mime}\n{body}\nEVCXR_END_CONTENT")?;
    out.flush()
}

fn show(mime: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    write_content(&mut lock, mime, bytes).context("writing to stdout")
}

/// PNG bytes of an image.
pub fn png_bytes(img: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).context("encoding PNG")?;
    Ok(buf.into_inner())
}

/// JPEG bytes of an image (quality 85).
pub fn jpeg_bytes(img: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 85).encode_image(img).context("encoding JPEG")?;
    Ok(buf)
}

/// Show a photo (or a grid of photos) inline. JPEG keeps notebooks with rendered outputs small;
/// charts use PNG, which keeps their lines sharp.
pub fn show_image(img: &RgbImage) -> anyhow::Result<()> {
    show("image/jpeg", &jpeg_bytes(img)?)
}

fn show_chart(img: &RgbImage) -> anyhow::Result<()> {
    show("image/png", &png_bytes(img)?)
}

/// Show images as a grid, `cols` per row, each fitted into `cell` pixels.
pub fn show_grid(images: &[&RgbImage], cols: usize, cell: u32) -> anyhow::Result<()> {
    show_image(&crate::plot::image_grid(images, cols, cell)?)
}

/// Draw with plotters into a `width x height` RGB image.
pub fn render(width: u32, height: u32, draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> anyhow::Result<()>) -> anyhow::Result<RgbImage> {
    let mut buf = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root)?;
    }
    RgbImage::from_raw(width, height, buf).ok_or_else(|| anyhow!("plot buffer has the wrong size"))
}

/// Loss and accuracy curves of one run (phase switches marked), inline.
pub fn show_curves(history: &History, title: &str) -> anyhow::Result<()> {
    show_chart(&render(1000, 400, |root| draw_curves(root, history, title))?)
}

/// Several runs on one chart (training loss and test accuracy), inline.
pub fn show_comparison(runs: &[(&str, &History)], title: &str) -> anyhow::Result<()> {
    show_chart(&render(1000, 400, |root| draw_comparison(root, runs, title))?)
}

/// The confusion matrix of `metrics` (rows true, columns predicted), inline.
pub fn show_confusion(metrics: &Metrics, title: &str) -> anyhow::Result<()> {
    let (w, h) = confusion_size(metrics.classes.len());
    show_chart(&render(w, h, |root| draw_confusion(root, metrics, title))?)
}

/// The `k` most confidently wrong photos of `ds` (true class, predicted class, probability), inline.
pub fn show_top_losses(ds: &crate::data::ImageFolder, predictions: &Predictions, k: usize) -> anyhow::Result<()> {
    show_image(&top_losses_grid(ds, predictions, k, 8, 150)?)
}

/// Per-class precision, recall, F1 and support, then the accuracy, as an inline table.
pub fn show_metrics(metrics: &Metrics) -> anyhow::Result<()> {
    let mut rows: Vec<Vec<String>> = metrics
        .classes
        .iter()
        .map(|c| vec![c.class.clone(), format!("{:.3}", c.precision), format!("{:.3}", c.recall), format!("{:.3}", c.f1), c.support.to_string()])
        .collect();
    rows.push(vec![format!("{} accuracy", metrics.split), String::new(), String::new(), format!("{:.3}", metrics.accuracy), metrics.images.to_string()]);
    show_table(&["class", "precision", "recall", "F1", "support"], &rows)
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An HTML table, inline.
pub fn show_table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut html = String::from("<table><thead><tr>");
    for h in header {
        html += &format!("<th>{}</th>", escape_html(h));
    }
    html += "</tr></thead><tbody>";
    for row in rows {
        html += "<tr>";
        for cell in row {
            html += &format!("<td>{}</td>", escape_html(cell));
        }
        html += "</tr>";
    }
    html += "</tbody></table>";
    show("text/html", html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_block_round_trips_a_png() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let mut out = Vec::new();
        write_content(&mut out, "image/png", &png_bytes(&img).unwrap()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "EVCXR_BEGIN_CONTENT image/png");
        assert_eq!(lines[2], "EVCXR_END_CONTENT");
        let bytes = base64::engine::general_purpose::STANDARD.decode(lines[1]).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back, img);
    }

    #[test]
    fn html_is_written_as_text_and_escaped() {
        let mut out = Vec::new();
        write_content(&mut out, "text/html", b"<b>a</b>").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "EVCXR_BEGIN_CONTENT text/html\n<b>a</b>\nEVCXR_END_CONTENT\n");
        assert_eq!(escape_html("a<b & c>"), "a&lt;b &amp; c&gt;");
    }

    #[test]
    fn curves_render_to_an_image_with_ink() {
        let rec = |epoch, acc: f64| crate::train::EpochRecord {
            epoch,
            loss: 1.0 / epoch as f64,
            train_acc: acc,
            test_acc: acc,
            test_loss: 0.5,
            val_loss: Some(0.6),
            val_acc: Some(acc - 0.1),
            examples_per_sec: 1.0,
            train_seconds: 1.0,
            phase: if epoch < 3 { "head".into() } else { "fine-tune".into() },
            lr: 1e-3,
        };
        let h = History { records: vec![rec(1, 0.5), rec(2, 0.7), rec(3, 0.9)], best_epoch: None };
        for img in [render(600, 300, |r| draw_curves(r, &h, "t")).unwrap(), render(600, 300, |r| draw_comparison(r, &[("a", &h), ("b", &h)], "t")).unwrap()] {
            assert_eq!(img.dimensions(), (600, 300));
            let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 100)).count();
            assert!(dark > 500, "only {dark} dark pixels: nothing drawn");
        }
    }

    #[test]
    fn setting_env_override() {
        // Only this test touches WORKBOOK_SETTING.
        std::env::set_var("WORKBOOK_SETTING", "FULL");
        assert_eq!(Setting::from_env_or(Setting::Quick), Setting::Full);
        std::env::set_var("WORKBOOK_SETTING", "nonsense");
        assert_eq!(Setting::from_env_or(Setting::Quick), Setting::Quick);
        std::env::remove_var("WORKBOOK_SETTING");
        assert_eq!(Setting::Full.epochs(2, 5), 5);
        assert!(Setting::Quick.run_dir("two phase: x").ends_with("runs/notebooks/quick/two-phase--x"));
    }
}
