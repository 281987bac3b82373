//! `finetune serve`: a trained model behind HTTP, for the Keras lesson's "Day 9: save & serve"
//! and the classroom moment of photographing a sandwich.
//!
//! - `GET /`: a self-contained SeeFood page (no CDN): pick, drop or photograph an image, see the
//!   class and a probability bar;
//! - `POST /predict`: raw image bytes (or multipart field `file`) in, JSON out;
//! - `GET /health`, `GET /model` (backbone, classes, image size, normalization, date, accuracy).
//!
//! Images are preprocessed from the model's own [`ModelCard`] (image size, normalization): the
//! client sends raw photos. Decoding runs on tokio's blocking pool, the forward pass on one
//! worker thread that batches waiting requests ([`batcher`]); bad input gets a status and a
//! JSON error ([`decode`], [`error`]). Ctrl-C or SIGTERM stops accepting, finishes the requests
//! in flight, then returns.

pub mod batcher;
pub mod decode;
pub mod error;
pub mod infer;
pub mod routes;

use crate::checkpoint::ModelCard;
use crate::models::Classifier;
use anyhow::Context;
use batcher::{BatchConfig, Batcher};
pub use decode::DecodeLimits;
pub use error::ApiError;
pub use routes::{ModelInfo, PredictResponse};
use routes::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything `finetune serve` can be told.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where to listen; port 0 takes a free one (tests).
    pub addr: SocketAddr,
    /// When set, `/predict` and `/model` need `Authorization: Bearer <token>` or `?token=`.
    pub token: Option<String>,
    /// Largest request body (bytes): more is 413.
    pub max_bytes: usize,
    /// Largest batch per forward pass.
    pub max_batch: usize,
    /// Requests admitted at once (waiting or running); one more is 503 with Retry-After.
    pub queue_depth: usize,
    /// How long a batch's first request waits for others (ms).
    pub batch_wait_ms: u64,
    /// Off: one request per forward pass.
    pub dynamic_batching: bool,
    /// Classes returned when the request does not ask (`?top_k=`).
    pub top_k: usize,
    pub decode_limits: DecodeLimits,
    /// The name `/predict` and `/model` report (default: the weights file).
    pub model_name: String,
    /// Tokio threads for HTTP (the model has its own thread; Candle's kernels their own pool).
    pub http_threads: usize,
    /// A request whose body has not arrived within this long is answered 408.
    pub body_timeout: Duration,
    /// A connection whose request headers have not arrived within this long is closed.
    pub header_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            max_bytes: 10 << 20,
            max_batch: 16,
            queue_depth: 64,
            batch_wait_ms: 5,
            dynamic_batching: true,
            top_k: 5,
            decode_limits: DecodeLimits::default(),
            model_name: "model".into(),
            http_threads: 2,
            body_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
        }
    }
}

impl ServeConfig {
    /// A warning when the server is reachable from other machines by anyone.
    pub fn exposure_warning(&self) -> Option<String> {
        (!self.addr.ip().is_loopback() && self.token.is_none()).then(|| {
            format!(
                "warning: listening on {} without --token: anyone on the network can use the model; pass --token <secret>",
                self.addr
            )
        })
    }
}

/// A server running on its own thread (tests, the load benchmark; the CLI uses [`run`]).
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningServer {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, finish the requests in flight, then return.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.take().map(|s| s.send(()));
        self.join()
    }

    /// Wait until the server stops by itself (a signal, for [`run`]).
    pub fn join(mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start serving `model` on `config.addr` (bound before this returns, so `addr` is the real
/// port). Does not listen for signals.
pub fn spawn(model: Classifier, card: &ModelCard, config: ServeConfig) -> anyhow::Result<RunningServer> {
    start(model, card, config, false)
}

/// Serve until Ctrl-C or SIGTERM, then finish the requests in flight and return (the CLI).
pub fn run(model: Classifier, card: &ModelCard, config: ServeConfig) -> anyhow::Result<()> {
    if let Some(w) = config.exposure_warning() {
        eprintln!("{w}");
    }
    let server = start(model, card, config.clone(), true)?;
    let url = server.url();
    let link = match &config.token {
        Some(_) => format!("{url}/?token=<token>"),
        None => format!("{url}/"),
    };
    let batching = match config.dynamic_batching {
        true => format!("dynamic batching up to {} waiting {} ms", config.max_batch, config.batch_wait_ms),
        false => "one request per forward pass".to_string(),
    };
    eprintln!("serving {} on {url} ({batching}; open {link}; POST /predict, GET /model, GET /health; Ctrl-C stops)", config.model_name);
    if config.addr.ip().is_unspecified() {
        eprintln!("from a phone on the same network: http://<this machine's LAN address>:{}/?token=<token>", server.addr.port());
    }
    server.join()?;
    eprintln!("stopped: requests in flight were answered");
    Ok(())
}

fn start(model: Classifier, card: &ModelCard, config: ServeConfig, signals: bool) -> anyhow::Result<RunningServer> {
    let image_size = card.image_size_for(model.arch);
    let info = ModelInfo {
        name: config.model_name.clone(),
        backbone: model.arch.name().to_string(),
        classes: model.class_names.clone(),
        image_size,
        normalization: card.normalization_for(model.arch),
        trained_at: card.trained_at.clone(),
        test_accuracy: card.test_accuracy,
        dynamic_batching: config.dynamic_batching,
        max_batch: if config.dynamic_batching { config.max_batch.max(1) } else { 1 },
        max_bytes: config.max_bytes,
    };
    let batch = BatchConfig {
        capacity: config.queue_depth,
        max_batch: config.max_batch,
        batch_wait: Duration::from_millis(config.batch_wait_ms),
        dynamic: config.dynamic_batching,
    };
    let listener = std::net::TcpListener::bind(config.addr).with_context(|| format!("cannot listen on {}", config.addr))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let batcher = Batcher::start(model, image_size, batch).context("cannot start the inference thread")?;
    let state = Arc::new(AppState {
        batcher,
        info,
        token: config.token.clone(),
        max_bytes: config.max_bytes,
        decode_limits: config.decode_limits,
        default_top_k: config.top_k,
        started: Instant::now(),
        body_timeout: config.body_timeout,
        admission: tokio::sync::Semaphore::new(config.queue_depth.max(1)),
        decoders: tokio::sync::Semaphore::new(decoders(&config.decode_limits)),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads.max(1))
        .thread_name("serve-http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let header_timeout = config.header_timeout;
    let thread = std::thread::Builder::new().name("serve".into()).spawn(move || -> anyhow::Result<()> {
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let app = routes::router(state);
            let shutdown = async move {
                tokio::select! {
                    _ = stop_rx => {}
                    _ = signal(signals) => eprintln!("signal received: finishing the requests in flight"),
                }
            };
            accept_loop(listener, app, header_timeout, shutdown).await
        })
        // The router (and with it the batcher, whose drop lets the worker finish its queue)
        // is dropped when `serve` returns.
    })?;
    Ok(RunningServer { addr, stop: Some(stop_tx), thread: Some(thread) })
}

/// HTTP/1.1 on each accepted connection until `shutdown`, then waits for the requests in flight.
/// A client that opens a connection and never finishes its headers is closed after
/// `header_timeout` (with `axum::serve` it held its socket and task for ever).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: the next accept may succeed.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// How many uploads decode at once: one per CPU, but no more than half the machine's memory
/// holds at `max_alloc` each (a decode may take that much; before, 16 threads could each hold
/// an 11,000 px PNG).
pub fn decoders(limits: &DecodeLimits) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
    });
    match total {
        Some(mem) => ((mem / 2.0 / limits.max_alloc.max(1) as f64) as usize).clamp(1, cpus),
        None => cpus,
    }
}

/// Resolves on Ctrl-C or SIGTERM (never when `enabled` is false).
async fn signal(enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
