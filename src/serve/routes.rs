//! The HTTP routes: `GET /` (the SeeFood page), `GET /health`, `GET /model`, `POST /predict`.
//! Every failure is an [`ApiError`]: a status and a JSON message naming the problem.

use super::batcher::{Batcher, SubmitError};
use super::decode::{decode_upload, DecodeLimits};
use super::error::ApiError;
use super::infer::preprocess;
use crate::tasks::predict::Prediction;
use crate::transforms::Normalization;
use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Semaphore;
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("page.html");

/// What `GET /model` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    /// How the server names the model (by default the weights file).
    pub name: String,
    pub backbone: String,
    pub classes: Vec<String>,
    pub image_size: u32,
    pub normalization: Normalization,
    pub trained_at: Option<String>,
    pub test_accuracy: Option<f64>,
    pub dynamic_batching: bool,
    pub max_batch: usize,
    pub max_bytes: usize,
}

pub struct AppState {
    pub batcher: Batcher,
    pub info: ModelInfo,
    pub token: Option<String>,
    pub max_bytes: usize,
    pub decode_limits: DecodeLimits,
    pub default_top_k: usize,
    pub started: Instant,
    /// `/predict` requests at once (the queue depth): one more is 503 before its body is read,
    /// so uploads held in memory stay under `queue_depth x max_bytes`.
    pub admission: Semaphore,
    /// How long a request's body may take to arrive (then 408).
    pub body_timeout: Duration,
    /// Concurrent decodes ([`super::decoders`]): each may take up to `decode_limits.max_alloc`.
    pub decoders: Semaphore,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/model", get(model))
        .route("/predict", post(predict))
        .fallback(not_found)
        // Multipart reads its body under this limit; raw bodies are read by `read_body`.
        .layer(axum::extract::DefaultBodyLimit::max(state.max_bytes))
        .with_state(state)
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {}: try GET /, GET /health, GET /model or POST /predict", uri.path()))
}

async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let st = &s.batcher.stats;
    Json(serde_json::json!({
        "status": "ok",
        "pending": st.pending.load(Ordering::SeqCst),
        "capacity": s.batcher.config.capacity,
        "batches": st.batches.load(Ordering::Relaxed),
        "requests": st.requests.load(Ordering::Relaxed),
        "rejected": st.rejected.load(Ordering::Relaxed),
        "uptime_s": s.started.elapsed().as_secs(),
    }))
}

async fn model(State(s): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Result<Json<ModelInfo>, ApiError> {
    authorize(&s, &headers, &uri)?;
    Ok(Json(s.info.clone()))
}

#[derive(serde::Deserialize)]
struct PredictQuery {
    top_k: Option<usize>,
}

/// `POST /predict`'s answer.
#[derive(Debug, serde::Serialize)]
pub struct PredictResponse {
    pub class: String,
    pub probability: f32,
    pub top_k: Vec<Prediction>,
    pub model: String,
    /// From the request's arrival to this answer (ms), as the server measured it.
    pub latency_ms: f64,
    pub queue_ms: f64,
    pub inference_ms: f64,
    /// How many requests shared the forward pass.
    pub batch_size: usize,
    pub width: u32,
    pub height: u32,
}

async fn predict(State(s): State<Arc<AppState>>, req: Request) -> Result<Json<PredictResponse>, ApiError> {
    let t0 = Instant::now();
    let (parts, body) = req.into_parts();
    // Token, size and type first: a request refused for them never holds a queue slot.
    let (top_k, multipart) = match check_request(&s, &parts) {
        Ok(c) => c,
        Err(e) => {
            // Read what the client is still sending before answering: a client that has not
            // finished writing (a browser posting a 20 MB photo) otherwise gets a connection
            // reset instead of this message (nginx's "lingering close").
            drain(body).await;
            return Err(e);
        }
    };
    let Ok(_admitted) = s.admission.try_acquire() else {
        s.batcher.stats.rejected.fetch_add(1, Ordering::Relaxed);
        drain(body).await;
        return Err(busy(s.batcher.config.capacity));
    };
    let bytes = tokio::time::timeout(s.body_timeout, read_limited(body, s.max_bytes)).await.map_err(|_| {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {} s", s.body_timeout.as_secs()))
    })??;
    let bytes = if multipart { multipart_file(Request::from_parts(parts, Body::from(bytes))).await? } else { bytes };
    let limits = s.decode_limits;
    let (size, norm) = (s.info.image_size, s.info.normalization);
    // Decoding and resizing are CPU work: on the blocking pool, never on the async threads.
    let decoding = s.decoders.acquire().await.map_err(|_| ApiError::internal("the server is stopping"))?;
    let (input, width, height) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let img = decode_upload(&bytes, limits)?;
        let input = preprocess(&img, size, norm).map_err(|e| ApiError::bad_request(format!("cannot preprocess the image: {e:#}")))?;
        Ok((input, img.width(), img.height()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding task failed: {e}")))??;
    drop(decoding);
    let rx = s.batcher.submit(input, top_k).map_err(|e| match e {
        SubmitError::Full { capacity } => busy(capacity),
        SubmitError::Stopped => ApiError::busy("server shutting down", 5),
    })?;
    let done = rx
        .await
        .map_err(|_| ApiError::internal("the inference worker stopped before answering"))?
        .map_err(ApiError::internal)?;
    let best = done.predictions.first().cloned().ok_or_else(|| ApiError::internal("the model returned no classes"))?;
    Ok(Json(PredictResponse {
        class: best.class,
        probability: best.probability,
        top_k: done.predictions,
        model: s.info.name.clone(),
        latency_ms: t0.elapsed().as_secs_f64() * 1e3,
        queue_ms: done.queue_ms,
        inference_ms: done.infer_ms,
        batch_size: done.batch_size,
        width,
        height,
    }))
}

fn busy(capacity: usize) -> ApiError {
    ApiError::busy(format!("server busy: {capacity} requests already queued or running; retry shortly"), 1)
}

/// The token, from `Authorization: Bearer T` or `?token=T` (a phone opening a link).
fn authorize(s: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let Some(expected) = &s.token else { return Ok(()) };
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    let from_query = uri.query().and_then(|q| {
        q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(|t| {
            // Tokens are plain ASCII in practice; decode %XX so a link with any token works.
            percent_decode(t)
        })
    });
    match from_header.or(from_query) {
        None => Err(ApiError::unauthorized("missing token: send 'Authorization: Bearer <token>' (or open the page as /?token=<token>)")),
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("wrong token")),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Comparison whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// At most this much of a refused body is read and discarded before answering.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The checks that need no body: token, `?top_k`, declared length, content type. Returns
/// `top_k` and whether the body is `multipart/form-data` (field `file`); raw bodies are
/// `image/*`, `application/octet-stream` or untyped (curl `--data-binary`).
fn check_request(s: &AppState, parts: &Parts) -> Result<(usize, bool), ApiError> {
    authorize(s, &parts.headers, &parts.uri)?;
    let top_k = match parts.uri.query() {
        Some(_) => axum::extract::Query::<PredictQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::bad_request(format!("bad query: {e} (expected ?top_k=N)")))?
            .top_k
            .unwrap_or(s.default_top_k),
        None => s.default_top_k,
    };
    // As the CLI's --top-k: 0 is refused, more than the classes gives them all.
    if top_k == 0 {
        return Err(ApiError::bad_request("?top_k=0: ask for at least 1 class"));
    }
    let top_k = top_k.min(s.info.classes.len().max(1));
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > s.max_bytes as u64) {
        return Err(too_big(n, s.max_bytes));
    }
    let ctype = parts.headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)").to_ascii_lowercase());
    match ctype.as_deref().map(|c| c.split(';').next().unwrap_or("").trim()) {
        None | Some("application/octet-stream") => Ok((top_k, false)),
        Some(c) if c.starts_with("image/") => Ok((top_k, false)),
        Some("multipart/form-data") => Ok((top_k, true)),
        Some(c) => Err(ApiError::unsupported_media_type(format!(
            "content type '{c}' is not accepted: send the photo's bytes as image/* (e.g. image/jpeg) or application/octet-stream, or multipart/form-data with a 'file' field"
        ))),
    }
}

fn too_big(n: u64, max: usize) -> ApiError {
    ApiError::payload_too_large(format!("body of {n} bytes or more is over the limit of {max} bytes (--max-bytes)"))
}

/// The whole body, or 413 as soon as it passes `max` bytes (a chunked upload declares no
/// length); the rest of an oversized body is drained like [`drain`].
async fn read_limited(mut body: Body, max: usize) -> Result<Bytes, ApiError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                let n = (buf.len() + data.len()) as u64;
                drop(buf);
                drain(body).await;
                return Err(too_big(n, max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Read and discard the rest of a body, up to [`DRAIN_BYTES`] or [`DRAIN_TIME`].
async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut n = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, |d| d.len() as u64);
            if n > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

async fn multipart_file(req: Request) -> Result<Bytes, ApiError> {
    let mut mp = Multipart::from_request(req, &()).await.map_err(|e| ApiError::bad_request(format!("bad multipart body: {}", e.body_text())))?;
    loop {
        let field = mp.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else {
            return Err(ApiError::bad_request("multipart body has no 'file' field: send the photo as the form field 'file'"));
        };
        if field.name() == Some("file") {
            return field.bytes().await.map_err(multipart_error);
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let text = e.body_text();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(format!("multipart body over the limit (--max-bytes): {text}"))
    } else {
        ApiError::bad_request(format!("bad multipart body: {text}"))
    }
}
