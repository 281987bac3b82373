//! Pictures: training curves (plotters, PNG and SVG), image grids (d2l's `show_images`), the
//! confusion matrix, the top losses and the lr finder's loss-vs-lr plot.

pub mod confusion;
pub mod curves;
pub mod grid;
pub mod lr_find;
pub mod top_losses;

pub use curves::{draw_comparison, draw_curves, save_curves};
pub use confusion::{confusion_size, draw_confusion, save_confusion};
pub use grid::{image_grid, peek_grid, save_peek};
pub use lr_find::{draw_lr_find, save_lr_find};
pub use top_losses::{save_top_losses, top_losses_grid};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// plotters draws text with a font we ship, so no system font library is needed.
pub(crate) fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
    });
}
