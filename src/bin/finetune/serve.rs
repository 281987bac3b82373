//! `finetune serve`: its flags, checked, turned into the library's `ServeConfig`.

use crate::args::{choice, COUNT, CacheArgs, Checked, DeviceArgs};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use transfer_workbook::checkpoint::{load_model_with_card, WeightsSource};
use transfer_workbook::models::Arch;
use transfer_workbook::serve::{DecodeLimits, ServeConfig};
use transfer_workbook::train::limits;

/// Seconds: at least 1 (0 would close every connection at once).
const COUNT_U64: Checked<u64> = Checked(|flag, v| crate::args::worded(flag, limits::at_least_one(usize::try_from(v).unwrap_or(usize::MAX))));

/// `--batching`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Batching {
    Auto,
    On,
    Off,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The model to serve: a run's model.safetensors (its metadata gives the classes, image
    /// size and normalization), or pretrained ImageNet weights with --backbone.
    #[arg(long)]
    pub weights: String,
    /// Needed when the weights file does not name its backbone.
    #[arg(long, value_parser = choice::<Arch>())]
    pub backbone: Option<Arch>,
    /// Where to listen. 0.0.0.0:8080 lets phones on the same network in (use --token).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Require this token: `Authorization: Bearer <token>`, or open the page as /?token=<token>.
    #[arg(long)]
    pub token: Option<String>,
    /// Largest request body in bytes (more: 413).
    #[arg(long, default_value_t = 10 << 20)]
    pub max_bytes: usize,
    /// Largest width or height of an uploaded image in px (more: 413, decompression-bomb guard).
    #[arg(long, default_value_t = DecodeLimits::default().max_side)]
    pub max_image_side: u32,
    /// Largest batch per forward pass.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests admitted at once, waiting or running (more: 503 with Retry-After).
    #[arg(long, default_value_t = 64)]
    pub queue_depth: usize,
    /// How long a batch's first request waits for others (ms).
    #[arg(long, default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Dynamic batching: group waiting requests into one forward pass. `auto`: on for a GPU,
    /// off on the CPU, where it measured no gain in throughput and a higher p99 latency and
    /// memory (README "Serve").
    #[arg(long, value_enum, default_value_t = Batching::Auto)]
    pub batching: Batching,
    #[arg(long, default_value_t = 5, value_parser = COUNT)]
    pub top_k: usize,
    /// Seconds a request's body may take to arrive (more: 408).
    #[arg(long, default_value_t = ServeConfig::default().body_timeout.as_secs(), value_parser = COUNT_U64)]
    pub body_timeout_s: u64,
    /// Seconds a connection's request headers may take to arrive (more: the connection is closed).
    #[arg(long, default_value_t = ServeConfig::default().header_timeout.as_secs(), value_parser = COUNT_U64)]
    pub header_timeout_s: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl ServeArgs {
    /// The server's configuration; `gpu` decides `--batching auto`.
    /// Every number checked before anything loads (the queue's slots are reserved up front).
    pub fn check(&self) -> anyhow::Result<()> {
        let within = |flag: &str, v: usize, lo: usize, hi: usize| -> anyhow::Result<()> {
            if v < lo || v > hi {
                anyhow::bail!("{flag} must be between {lo} and {hi} (got {v})");
            }
            Ok(())
        };
        within("--queue-depth", self.queue_depth, 1, 65_536)?;
        within("--max-batch", self.max_batch, 1, self.queue_depth.max(1))?;
        within("--batch-wait-ms", self.batch_wait_ms as usize, 0, 10_000)?;
        within("--max-bytes", self.max_bytes, 1, 1 << 30)?;
        within("--max-image-side", self.max_image_side as usize, 32, 100_000)
    }

    pub fn config(&self, gpu: bool) -> ServeConfig {
        let path = PathBuf::from(&self.weights);
        // "quick-freeze/model.safetensors" tells runs apart better than "model.safetensors".
        let model_name = match (path.parent().and_then(|p| p.file_name()), path.file_name()) {
            (Some(dir), Some(file)) => format!("{}/{}", dir.to_string_lossy(), file.to_string_lossy()),
            _ => self.weights.clone(),
        };
        ServeConfig {
            addr: self.addr,
            token: self.token.clone(),
            max_bytes: self.max_bytes,
            max_batch: self.max_batch,
            queue_depth: self.queue_depth,
            batch_wait_ms: self.batch_wait_ms,
            dynamic_batching: match self.batching {
                Batching::On => true,
                Batching::Off => false,
                Batching::Auto => gpu,
            },
            top_k: self.top_k,
            decode_limits: DecodeLimits { max_side: self.max_image_side, ..DecodeLimits::default() },
            model_name,
            body_timeout: std::time::Duration::from_secs(self.body_timeout_s),
            header_timeout: std::time::Duration::from_secs(self.header_timeout_s),
            ..ServeConfig::default()
        }
    }

    /// Load the model and serve it until Ctrl-C or SIGTERM.
    pub fn run(self) -> anyhow::Result<()> {
        self.check()?;
        let device = &self.device.device;
        let source = WeightsSource::parse(&self.weights);
        let (model, card) = load_model_with_card(&source, self.backbone, device, self.cache.hub().as_deref())?;
        // The file's image size decides every request's allocation: check it like a flag.
        crate::args::batch_and_size(self.max_batch, card.image_size_for(model.arch), false).with_context(|| format!("the image size stored in {}", self.weights))?;
        let config = self.config(!device.is_cpu());
        transfer_workbook::serve::run(model, &card, config)
    }
}
