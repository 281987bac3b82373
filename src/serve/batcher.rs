//! Dynamic batching (as TorchServe's `batch_size`/`max_batch_delay` and Triton's dynamic
//! batcher): requests wait in a bounded queue; one dedicated worker thread takes the first,
//! gathers whatever else arrives within `batch_wait` (up to `max_batch`), and runs them as one
//! forward pass. Candle's CPU kernels thus never run on the async threads, and a full queue
//! is refused at once (the caller answers 503) instead of growing memory.

use super::infer::forward_batch;
use crate::models::Classifier;
use crate::tasks::predict::Prediction;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How requests are grouped.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Requests admitted at once (waiting + in the running batch); one more gets 503.
    pub capacity: usize,
    /// Largest batch per forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub batch_wait: Duration,
    /// Off: one request per forward pass (the baseline the load test compares against).
    pub dynamic: bool,
}

/// One request's result.
#[derive(Clone, Debug)]
pub struct Done {
    pub predictions: Vec<Prediction>,
    /// How many requests shared its forward pass.
    pub batch_size: usize,
    /// Time spent waiting in the queue, then in the forward pass (ms).
    pub queue_ms: f64,
    pub infer_ms: f64,
}

struct Job {
    input: Vec<f32>,
    top_k: usize,
    admitted: Instant,
    reply: oneshot::Sender<Result<Done, String>>,
}

/// Counters shared with `/health`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests admitted and not yet answered.
    pub pending: AtomicUsize,
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq)]
pub enum SubmitError {
    Full { capacity: usize },
    Stopped,
}

pub struct Batcher {
    tx: Option<SyncSender<Job>>,
    worker: Option<JoinHandle<()>>,
    pub stats: Arc<Stats>,
    pub config: BatchConfig,
}

impl Batcher {
    /// Start the worker thread, which owns the model. `image_size` is the side length every
    /// input was preprocessed to.
    pub fn start(model: Classifier, image_size: u32, config: BatchConfig) -> std::io::Result<Self> {
        let config = BatchConfig { capacity: config.capacity.max(1), max_batch: config.max_batch.max(1), ..config };
        let (tx, rx) = sync_channel(config.capacity);
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        let worker = std::thread::Builder::new()
            .name("serve-inference".into())
            .spawn(move || worker(model, image_size, config, rx, s))?;
        Ok(Self { tx: Some(tx), worker: Some(worker), stats, config })
    }

    /// Queue one preprocessed input; the receiver gets its result. Never blocks.
    pub fn submit(&self, input: Vec<f32>, top_k: usize) -> Result<oneshot::Receiver<Result<Done, String>>, SubmitError> {
        let capacity = self.config.capacity;
        if self.stats.pending.fetch_add(1, Ordering::SeqCst) >= capacity {
            self.stats.pending.fetch_sub(1, Ordering::SeqCst);
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Full { capacity });
        }
        let (reply, rx) = oneshot::channel();
        let job = Job { input, top_k, admitted: Instant::now(), reply };
        let sent = match &self.tx {
            Some(tx) => tx.try_send(job),
            None => Err(TrySendError::Disconnected(job)),
        };
        match sent {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.stats.pending.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full { capacity },
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

impl Drop for Batcher {
    /// Close the queue; the worker answers what is still in it, then exits.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn worker(model: Classifier, image_size: u32, config: BatchConfig, rx: Receiver<Job>, stats: Arc<Stats>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        if config.dynamic {
            let deadline = Instant::now() + config.batch_wait;
            while jobs.len() < config.max_batch {
                match rx.try_recv() {
                    Ok(j) => {
                        jobs.push(j);
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(j) => jobs.push(j),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        run_batch(&model, image_size, jobs, &stats);
    }
}

fn run_batch(model: &Classifier, image_size: u32, mut jobs: Vec<Job>, stats: &Stats) {
    let n = jobs.len();
    let start = Instant::now();
    let top_k = jobs.iter().map(|j| j.top_k).max().unwrap_or(1);
    let inputs: Vec<Vec<f32>> = jobs.iter_mut().map(|j| std::mem::take(&mut j.input)).collect();
    // A panic inside a kernel must not take the only worker (and so the server) down.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| forward_batch(model, &inputs, image_size, top_k)))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the inference worker panicked on this batch")));
    let infer_ms = start.elapsed().as_secs_f64() * 1e3;
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.requests.fetch_add(n as u64, Ordering::Relaxed);
    match result {
        Ok(all) => {
            for (job, mut predictions) in jobs.into_iter().zip(all) {
                predictions.truncate(job.top_k.max(1));
                let queue_ms = (start - job.admitted).as_secs_f64() * 1e3;
                let _ = job.reply.send(Ok(Done { predictions, batch_size: n, queue_ms, infer_ms }));
                stats.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Err(e) => {
            let msg = format!("inference failed: {e:#}");
            for job in jobs {
                let _ = job.reply.send(Err(msg.clone()));
                stats.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}
