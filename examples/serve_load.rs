//! A bounded load test of `finetune serve` on loopback: N requests (default 1,000), C at a time
//! (default 16), real photos, then requests/s, p50/p99 latency, errors, mean batch size and the
//! process's peak RSS. Run once per mode (peak RSS is per process):
//!
//! ```text
//! cargo run --release --example serve_load -- --weights runs/quick-freeze/model.safetensors
//! cargo run --release --example serve_load -- --weights runs/quick-freeze/model.safetensors --no-dynamic-batching
//! ```
//! The server runs in this process (its own threads); the clients are C blocking threads.

use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use transfer_workbook::checkpoint::{load_model_with_card, WeightsSource};
use transfer_workbook::serve::{spawn, ServeConfig};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    weights: String,
    #[arg(long)]
    backbone: Option<transfer_workbook::models::Arch>,
    /// Photos to send (every *.jpg below it, cycled).
    #[arg(long, default_value = "../shared/data/hotdog-seefood/test")]
    data: PathBuf,
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long)]
    no_dynamic_batching: bool,
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    #[arg(long, default_value_t = 5)]
    batch_wait_ms: u64,
    #[arg(long, default_value_t = 64)]
    queue_depth: usize,
    /// At most this many photos are held in memory.
    #[arg(long, default_value_t = 64)]
    photos: usize,
}

fn jpegs(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            jpegs(&p, out)?;
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg")) {
            out.push(p);
        }
    }
    Ok(())
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn health(url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(ureq::get(&format!("{url}/health")).call()?.into_json()?)
}

fn main() -> anyhow::Result<()> {
    transfer_workbook::keep_freed_memory();
    let a = Args::parse();
    let mut files = Vec::new();
    jpegs(&a.data, &mut files).map_err(|e| anyhow::anyhow!("{}: {e}", a.data.display()))?;
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .jpg photos under {}", a.data.display());
    // Both classes: take every k-th file.
    let step = (files.len() / a.photos.max(1)).max(1);
    let photos: Vec<Vec<u8>> = files.iter().step_by(step).take(a.photos).map(std::fs::read).collect::<Result<_, _>>()?;

    let (model, card) = load_model_with_card(&WeightsSource::parse(&a.weights), a.backbone, &candle_core::Device::Cpu, None)?;
    let backbone = model.arch.name();
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse()?,
        max_batch: a.max_batch,
        batch_wait_ms: a.batch_wait_ms,
        queue_depth: a.queue_depth,
        dynamic_batching: !a.no_dynamic_batching,
        model_name: a.weights.clone(),
        ..ServeConfig::default()
    };
    let server = spawn(model, &card, config)?;
    let url = format!("{}/predict", server.url());
    let post = |body: &[u8]| -> Result<(), String> {
        match ureq::post(&url).timeout(Duration::from_secs(120)).set("Content-Type", "image/jpeg").send_bytes(body) {
            Ok(r) => r.into_string().map(|_| ()).map_err(|e| e.to_string()),
            Err(ureq::Error::Status(c, r)) => Err(format!("{c} {}", r.into_string().unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    };
    // Warm-up: one pass of each batch size the run may see is not needed; a few requests are.
    for p in photos.iter().take(4) {
        post(p).map_err(anyhow::Error::msg)?;
    }
    let before = health(&server.url())?;

    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let results: Vec<(Vec<f64>, Vec<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..a.concurrency)
            .map(|_| {
                s.spawn(|| {
                    let (mut lat, mut errs) = (Vec::new(), Vec::new());
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= a.requests {
                            break;
                        }
                        let t = Instant::now();
                        match post(&photos[i % photos.len()]) {
                            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                            Err(e) => errs.push(e),
                        }
                    }
                    (lat, errs)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let after = health(&server.url())?;
    let mut lat: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let errors: Vec<&String> = results.iter().flat_map(|r| r.1.iter()).collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() as f64 - 1.0) * p).round() as usize] };
    let batches = after["batches"].as_u64().unwrap_or(0) - before["batches"].as_u64().unwrap_or(0);
    let served = after["requests"].as_u64().unwrap_or(0) - before["requests"].as_u64().unwrap_or(0);
    println!(
        "{backbone} {}px, dynamic batching {} (max batch {}, wait {} ms), {} requests, {} concurrent, {} photos",
        card.image_size_or_default(),
        if a.no_dynamic_batching { "off" } else { "on" },
        a.max_batch,
        a.batch_wait_ms,
        a.requests,
        a.concurrency,
        photos.len()
    );
    println!(
        "  {:.1} req/s  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  errors {}  mean batch {:.2}  peak RSS {:.0} MB  ({:.1} s)",
        lat.len() as f64 / wall,
        q(0.5),
        q(0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        errors.len(),
        served as f64 / batches.max(1) as f64,
        peak_rss_mb().unwrap_or(f64::NAN),
        wall
    );
    if let Some(e) = errors.first() {
        println!("  first error: {e}");
    }
    server.stop()?;
    anyhow::ensure!(errors.is_empty(), "{} requests failed", errors.len());
    Ok(())
}
