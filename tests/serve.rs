//! `finetune serve` against a real HTTP client on 127.0.0.1: every route, every bad input,
//! dynamic batching, back-pressure, a bounded load and a graceful stop. A tiny ResNet-18
//! (2 classes, 32 px) saved with its model card keeps each test to seconds.

mod support;

use candle_core::Device;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use transfer_workbook::checkpoint::{load_model_with_card, save_model_with_card, ModelCard, WeightsSource};
use transfer_workbook::models::{Arch, Classifier, ModelOptions};
use transfer_workbook::serve::{spawn, RunningServer, ServeConfig};
use transfer_workbook::transforms::Normalization;

const CLASSES: [&str; 2] = ["hotdog", "not-hotdog"];

/// A scratch 2-class ResNet-18 saved as a run would save it (image size 32 in its card).
fn tiny_model_file(dir: &Path) -> PathBuf {
    let opts = ModelOptions { seed: 7, ..ModelOptions::new(Arch::ResNet18, CLASSES.iter().map(|s| s.to_string()).collect()) };
    let model = Classifier::scratch(&opts, &Device::Cpu).unwrap();
    let card = ModelCard {
        image_size: Some(32),
        normalization: Some(Normalization::imagenet()),
        trained_at: Some("2026-01-02T03:04:05Z".into()),
        test_accuracy: Some(0.5),
        ..ModelCard::default()
    };
    let path = dir.join("model.safetensors");
    save_model_with_card(&model, &card, &path).unwrap();
    path
}

fn load(path: &Path) -> (Classifier, ModelCard) {
    load_model_with_card(&WeightsSource::File(path.to_path_buf()), None, &Device::Cpu, None).unwrap()
}

fn start(path: &Path, config: ServeConfig) -> RunningServer {
    let (model, card) = load(path);
    spawn(model, &card, ServeConfig { addr: "127.0.0.1:0".parse().unwrap(), model_name: "tiny".into(), ..config }).unwrap()
}

/// A real hot-dog photo when the data set is there, else a generated JPEG.
fn sample_jpeg() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/hotdog-seefood/test/hot_dog");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jpg")).collect();
        files.sort();
        if let Some(f) = files.first() {
            return std::fs::read(f).unwrap();
        }
    }
    let img = image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

struct Reply {
    status: u16,
    json: serde_json::Value,
    retry_after: Option<String>,
}

fn reply(r: Result<ureq::Response, ureq::Error>) -> Reply {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let retry_after = resp.header("retry-after").map(str::to_string);
    let mut text = String::new();
    resp.into_reader().read_to_string(&mut text).unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    Reply { status, json, retry_after }
}

fn post(url: &str, content_type: Option<&str>, token: Option<&str>, body: &[u8]) -> Reply {
    let mut req = ureq::post(url).timeout(Duration::from_secs(60));
    if let Some(c) = content_type {
        req = req.set("Content-Type", c);
    }
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    reply(req.send_bytes(body))
}

/// A body of no declared length (`Transfer-Encoding: chunked`).
fn chunked(url: &str, token: &str, body: &[u8]) -> Reply {
    let req = ureq::post(url).timeout(Duration::from_secs(60)).set("Content-Type", "image/jpeg").set("Authorization", &format!("Bearer {token}"));
    reply(req.send(std::io::Cursor::new(body.to_vec())))
}

fn get(url: &str) -> Reply {
    reply(ureq::get(url).timeout(Duration::from_secs(30)).call())
}

fn multipart(field: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----seefood-test-boundary";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").into_bytes();
    body.extend(bytes);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Poll `/health` until `pending` requests are admitted (or fail after 30 s).
fn wait_pending(url: &str, pending: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if get(&format!("{url}/health")).json["pending"].as_u64() == Some(pending) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server never had {pending} requests pending");
}

#[test]
fn every_route_answers_and_predictions_match_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_file(dir.path());
    let server = start(&path, ServeConfig::default());
    let url = server.url();

    let page = ureq::get(&format!("{url}/")).call().unwrap();
    assert_eq!(page.content_type(), "text/html");
    let html = page.into_string().unwrap();
    assert!(html.contains("SeeFood") && html.contains("capture=\"environment\"") && html.contains("/predict"));
    // Self-contained: nothing loaded from another host (the server may have no internet).
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("@import"), "the page loads something from outside");

    let health = get(&format!("{url}/health"));
    assert_eq!((health.status, health.json["status"].as_str()), (200, Some("ok")));

    let m = get(&format!("{url}/model"));
    assert_eq!(m.status, 200);
    assert_eq!(m.json["backbone"], "resnet18");
    assert_eq!(m.json["classes"], serde_json::json!(CLASSES));
    assert_eq!(m.json["image_size"], 32);
    assert_eq!(m.json["trained_at"], "2026-01-02T03:04:05Z");
    assert_eq!(m.json["test_accuracy"], 0.5);

    // The served answer equals the library's single-image predict on the same photo.
    let jpeg = sample_jpeg();
    let (reference_model, _) = load(&path);
    let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
    let expected = transfer_workbook::tasks::predict::predict(&reference_model, &img, 32, 2).unwrap();
    let p = post(&format!("{url}/predict"), Some("image/jpeg"), None, &jpeg);
    assert_eq!(p.status, 200, "{}", p.json);
    assert_eq!(p.json["class"], expected[0].class.as_str());
    assert!((p.json["probability"].as_f64().unwrap() - expected[0].probability as f64).abs() < 1e-5, "{} vs {:?}", p.json, expected);
    assert_eq!(p.json["top_k"].as_array().unwrap().len(), 2);
    let sum: f64 = p.json["top_k"].as_array().unwrap().iter().map(|t| t["probability"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    assert_eq!(p.json["model"], "tiny");
    assert!(p.json["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!((p.json["width"].as_u64(), p.json["height"].as_u64()), (Some(img.width() as u64), Some(img.height() as u64)));

    // Multipart (a browser form), no content type (curl --data-binary), and ?top_k.
    let (ctype, body) = multipart("file", &jpeg);
    let mp = post(&format!("{url}/predict?top_k=1"), Some(&ctype), None, &body);
    assert_eq!(mp.status, 200, "{}", mp.json);
    assert_eq!((mp.json["class"].clone(), mp.json["top_k"].as_array().unwrap().len()), (p.json["class"].clone(), 1));
    let raw = post(&format!("{url}/predict"), None, None, &jpeg);
    assert_eq!((raw.status, raw.json["probability"].clone()), (200, p.json["probability"].clone()));

    let nf = get(&format!("{url}/nope"));
    assert_eq!(nf.status, 404);
    assert!(nf.json["error"].as_str().unwrap().contains("/nope"));
    server.stop().unwrap();
}

#[test]
fn bad_input_gets_the_right_status_and_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_file(dir.path());
    let token = "s3cret";
    let server = start(&path, ServeConfig { token: Some(token.into()), max_bytes: 1 << 20, ..ServeConfig::default() });
    let url = format!("{}/predict", server.url());
    let jpeg = sample_jpeg();
    let truncated = &jpeg[..jpeg.len() * 6 / 10];
    let (no_file_type, no_file_body) = multipart("photo", &jpeg);
    let big = vec![0xFFu8; (1 << 20) + 1];
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        ("no token", post(&url, Some("image/jpeg"), None, &jpeg), 401, "missing token"),
        ("wrong token", post(&url, Some("image/jpeg"), Some("guess"), &jpeg), 401, "wrong token"),
        ("empty body", post(&url, Some("image/jpeg"), Some(token), b""), 400, "empty body"),
        ("not an image (text)", post(&url, Some("image/jpeg"), Some(token), b"this is not a photo of a hot dog"), 400, "not an image"),
        ("truncated JPEG (first 60%)", post(&url, Some("image/jpeg"), Some(token), truncated), 400, "truncated JPEG"),
        ("PNG declaring 30,000 x 30,000 px", post(&url, Some("image/png"), Some(token), &support::png_bomb(30_000, 2)), 413, "decompression-bomb"),
        ("body over --max-bytes (1 MiB + 1)", post(&url, Some("image/jpeg"), Some(token), &big), 413, "over the limit"),
        ("chunked body over --max-bytes (no length)", chunked(&url, token, &big), 413, "over the limit"),
        ("wrong content type (text/plain)", post(&url, Some("text/plain"), Some(token), &jpeg), 415, "text/plain"),
        ("form-urlencoded (curl -d)", post(&url, Some("application/x-www-form-urlencoded"), Some(token), &jpeg), 415, "not accepted"),
        ("multipart without a 'file' field", post(&url, Some(&no_file_type), Some(token), &no_file_body), 400, "'file'"),
    ];
    println!("| input | status | message |\n|---|---|---|");
    for (input, r, _, _) in &cases {
        println!("| {input} | {} | {} |", r.status, r.json["error"].as_str().unwrap_or("(none)"));
    }
    for (input, r, status, needle) in &cases {
        assert_eq!(r.status, *status, "{input}: {}", r.json);
        assert_eq!(r.json["status"], *status, "{input}: {}", r.json);
        let msg = r.json["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{input}: {msg:?} should contain {needle:?}");
    }
    // The token also opens /model, and from the link's query string (the phone case).
    assert_eq!(get(&format!("{}/model", server.url())).status, 401);
    assert_eq!(get(&format!("{}/model?token={token}", server.url())).status, 200);
    // None of it hurt the server.
    let ok = post(&url, Some("image/jpeg"), Some(token), &jpeg);
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(get(&format!("{}/health", server.url())).json["requests"], 1);
    server.stop().unwrap();
}

#[test]
fn the_truncated_jpeg_check_is_structural() {
    use transfer_workbook::serve::decode::check_jpeg_complete;
    let jpeg = sample_jpeg();
    assert!(check_jpeg_complete(&jpeg).is_ok());
    // Data after EOI (a phone's appended motion-photo video) is fine; a cut anywhere is not.
    let mut trailer = jpeg.clone();
    trailer.extend(b"ftypmp42 appended video bytes");
    assert!(check_jpeg_complete(&trailer).is_ok());
    for cut in [3, 100, jpeg.len() / 2, jpeg.len() - 2, jpeg.len() - 1] {
        let e = check_jpeg_complete(&jpeg[..cut]).unwrap_err();
        assert_eq!(e.status, 400, "cut at {cut}");
    }
    // Cut at half with an end-of-image marker appended: whole to the walk, refused by the decode.
    let mut spliced = jpeg[..jpeg.len() / 2].to_vec();
    spliced.extend([0xFF, 0xD9]);
    assert!(check_jpeg_complete(&spliced).is_ok());
    let e = transfer_workbook::serve::decode::decode_upload(&spliced, Default::default()).unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message.contains("ends or breaks before its last row") && e.message.ends_with("was the upload cut off?"), "{}", e.message);
}

#[test]
fn waiting_requests_share_a_batch_and_a_full_queue_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_file(dir.path());
    let jpeg = std::sync::Arc::new(sample_jpeg());
    // A long batch wait: 4 requests sent together are one batch (the batch runs as soon as it
    // is full, so the wait is not spent).
    let cfg = ServeConfig { max_batch: 4, queue_depth: 8, batch_wait_ms: 20_000, ..ServeConfig::default() };
    let server = start(&path, cfg);
    let url = format!("{}/predict", server.url());
    let sizes: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| post(&url, Some("image/jpeg"), None, &jpeg))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).map(|r| r.json["batch_size"].as_u64().unwrap()).collect()
    });
    assert_eq!(sizes, vec![4; 4]);
    server.stop().unwrap();

    // Room for 2: two requests wait (batch not full, long wait), the third is refused at once.
    let cfg = ServeConfig { max_batch: 8, queue_depth: 2, batch_wait_ms: 3_000, ..ServeConfig::default() };
    let server = start(&path, cfg);
    let base = server.url();
    let url = format!("{base}/predict");
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| post(&url, Some("image/jpeg"), None, &jpeg))).collect();
        wait_pending(&base, 2);
        let busy = post(&url, Some("image/jpeg"), None, &jpeg);
        assert_eq!(busy.status, 503, "{}", busy.json);
        assert_eq!(busy.retry_after.as_deref(), Some("1"));
        assert!(busy.json["error"].as_str().unwrap().contains("busy"));
        for h in hs {
            let r = h.join().unwrap();
            assert_eq!((r.status, r.json["batch_size"].as_u64()), (200, Some(2)), "{}", r.json);
        }
    });
    assert_eq!(get(&format!("{base}/health")).json["rejected"], 1);
    server.stop().unwrap();
}

#[test]
fn a_bounded_load_has_no_errors_and_stop_finishes_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_file(dir.path());
    let jpeg = sample_jpeg();
    let server = start(&path, ServeConfig::default());
    let url = format!("{}/predict", server.url());
    let (n, workers) = (200, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut errors = 0;
                    while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                        if post(&url, Some("image/jpeg"), None, &jpeg).status != 200 {
                            errors += 1;
                        }
                    }
                    errors
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(errors, 0);
    let h = get(&format!("{}/health", server.url())).json;
    assert_eq!((h["requests"].as_u64(), h["rejected"].as_u64(), h["pending"].as_u64()), (Some(n as u64), Some(0), Some(0)));
    server.stop().unwrap();

    // A request waiting in the batcher when the server is told to stop still gets its answer.
    let server = start(&path, ServeConfig { batch_wait_ms: 2_000, ..ServeConfig::default() });
    let base = server.url();
    let url = format!("{base}/predict");
    std::thread::scope(|s| {
        let h = s.spawn(|| post(&url, Some("image/jpeg"), None, &jpeg));
        wait_pending(&base, 1);
        server.stop().unwrap();
        assert_eq!(h.join().unwrap().status, 200);
    });
    assert!(ureq::get(&format!("{base}/health")).timeout(Duration::from_secs(5)).call().is_err(), "still listening after stop");
}

#[test]
fn an_open_address_without_a_token_is_warned_about() {
    let open = ServeConfig { addr: "0.0.0.0:8080".parse().unwrap(), ..ServeConfig::default() };
    assert!(open.exposure_warning().unwrap().contains("--token"));
    assert!(ServeConfig { token: Some("t".into()), ..open.clone() }.exposure_warning().is_none());
    assert!(ServeConfig::default().exposure_warning().is_none());
}

#[cfg(unix)]
#[test]
fn cli_serve_answers_then_sigterm_finishes_the_request_in_flight() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_file(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["serve", "--weights", path.to_str().unwrap(), "--addr", "127.0.0.1:0", "--batching", "on", "--batch-wait-ms", "2000", "--token", "tok"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = stderr.by_ref().map(|l| l.unwrap()).find(|l| l.starts_with("serving")).expect("no 'serving' line");
    let base = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    assert!(line.contains("model.safetensors") && line.contains("dynamic batching up to 16"), "{line}");
    let jpeg = sample_jpeg();
    let url = format!("{base}/predict");
    std::thread::scope(|s| {
        let h = s.spawn(|| post(&url, Some("image/jpeg"), Some("tok"), &jpeg));
        wait_pending(&base, 1);
        let kill = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.json);
    });
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = stderr.map(|l| l.unwrap()).collect();
    assert!(rest.iter().any(|l| l.contains("signal received")) && rest.iter().any(|l| l.starts_with("stopped")), "{rest:?}");
}

/// Every serve flag is checked before the model loads (the queue's slots are reserved up
/// front: a huge `--queue-depth` used to abort), and so is the image size the model file holds.
#[test]
fn cli_serve_refuses_bad_numbers_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_file(dir.path());
    for (flags, want) in [
        (&["--queue-depth", "0"][..], "--queue-depth must be between 1 and 65536 (got 0)"),
        (&["--queue-depth", "1000000000"], "--queue-depth must be between 1 and 65536"),
        (&["--max-batch", "100", "--queue-depth", "8"], "--max-batch must be between 1 and 8 (got 100)"),
        (&["--top-k", "0"], "--top-k must be at least 1"),
        (&["--max-bytes", "0"], "--max-bytes must be between 1 and"),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
            .args(["serve", "--weights", "missing.safetensors"])
            .args(flags)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && t.contains(want) && !t.contains("missing.safetensors"), "{flags:?}: {t}");
    }
    // A model file claiming a 100,000 px input is refused by the memory estimate, not allocated.
    let (classifier, mut card) = load(&model);
    card.image_size = Some(100_000);
    let big = dir.path().join("big.safetensors");
    save_model_with_card(&classifier, &card, &big).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_finetune")).args(["serve", "--weights", big.to_str().unwrap()]).output().unwrap();
    let t = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && t.contains("the image size stored in") && t.contains("GB"), "{t}");
}

fn png_of(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Sends `request` (cut short) on a raw connection, then reads until the server closes it (or
/// 20 s pass): the read's result, what came back, and how long the server took.
fn stall(server: &RunningServer, request: &str) -> (std::io::Result<usize>, String, Duration) {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let t0 = Instant::now();
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    (read, String::from_utf8_lossy(&answer).into_owned(), t0.elapsed())
}

/// The decode budget counts the RGB copy: a greyscale PNG whose RGB copy would pass the limit
/// on its own is refused from its header (413), the RGB PNG of the same size is answered;
/// `?top_k=0` is refused as the CLI's `--top-k 0` is; a body that stops arriving gets 408.
#[test]
fn the_decode_budget_counts_the_rgb_copy_top_k_0_is_refused_and_a_stalled_body_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_file(dir.path());
    // 6000 x 6000: RGB 108 MB fits under 128 MB; grey is 36 MB + the 108 MB RGB copy.
    let limits = transfer_workbook::serve::DecodeLimits { max_side: 12_000, max_alloc: 128 << 20 };
    let cfg = ServeConfig { max_bytes: 8 << 20, decode_limits: limits, body_timeout: Duration::from_secs(1), ..ServeConfig::default() };
    let server = start(&path, cfg);
    let url = format!("{}/predict", server.url());
    let grey = png_of(image::DynamicImage::ImageLuma8(image::GrayImage::new(6000, 6000)));
    let r = post(&url, Some("image/png"), None, &grey);
    let msg = r.json["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(r.status, 413, "{}", r.json);
    assert!(msg.contains("6000 x 6000 px L8") && msg.contains("convert") && msg.contains("138 MiB"), "{msg}");
    let rgb = png_of(image::DynamicImage::ImageRgb8(image::RgbImage::new(6000, 6000)));
    let r = post(&url, Some("image/png"), None, &rgb);
    assert_eq!(r.status, 200, "{}", r.json);
    // ?top_k=0: 400, as the CLI refuses --top-k 0; more than the classes still gives them all.
    let jpeg = sample_jpeg();
    let r = post(&format!("{url}?top_k=0"), Some("image/jpeg"), None, &jpeg);
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(r.json["error"].as_str().unwrap().contains("top_k=0"), "{}", r.json);
    let r = post(&format!("{url}?top_k=9"), Some("image/jpeg"), None, &jpeg);
    assert_eq!((r.status, r.json["top_k"].as_array().unwrap().len()), (200, 2), "{}", r.json);
    // Headers promising 1000 bytes, 10 of them sent, then nothing: 408 after the body timeout.
    let (_, answer, waited) = stall(&server, "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    server.stop().unwrap();
}

/// A client that opens a connection and stops halfway through its headers is closed after
/// `header_timeout` (axum::serve has no timer, so hyper's own header timeout never fired).
#[test]
fn a_connection_whose_headers_stop_arriving_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_file(dir.path());
    let server = start(&path, ServeConfig { header_timeout: Duration::from_secs(1), ..ServeConfig::default() });
    let (read, _, waited) = stall(&server, "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty");
    assert!(read.is_ok(), "the connection was not closed: {read:?} after {waited:?}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(15), "{waited:?}");
    // The server still answers the next client.
    assert_eq!(get(&format!("{}/health", server.url())).status, 200);
    server.stop().unwrap();
}

/// Concurrent decodes are sized by memory: never more than half the machine holds at
/// `max_alloc` each, never fewer than one, never more than the CPUs.
#[test]
fn concurrent_decodes_fit_in_half_the_memory() {
    use transfer_workbook::serve::{decoders, DecodeLimits};
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(decoders(&DecodeLimits { max_side: 100, max_alloc: 1 }), cpus);
    assert_eq!(decoders(&DecodeLimits { max_side: 100, max_alloc: u64::MAX / 2 }), 1);
    let mem: f64 = std::fs::read_to_string("/proc/meminfo").unwrap().lines().find(|l| l.starts_with("MemTotal:")).unwrap().split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0;
    let third = (mem / 3.0) as u64;
    assert_eq!(decoders(&DecodeLimits { max_side: 100, max_alloc: third }), 1);
}
