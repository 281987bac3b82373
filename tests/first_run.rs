//! The first run a learner makes, online: `finetune finetune` with no `--data` and no
//! `--weights` downloads d2l's hotdog.zip and `timm/resnet18.tv_in1k`'s model.safetensors
//! (through hf-hub), caches both, trains; a second run asks for nothing. Then the faults, each
//! a clear error that leaves nothing half-written that a later run would take for good.
//!
//! Both sites are real HTTP servers on 127.0.0.1 started and stopped here
//! (`support/loopback.rs`), reached through the documented variables `HF_ENDPOINT` and
//! `WORKBOOK_HOTDOG_URL`. The hub serves a ResNet-18 checkpoint with timm's tensor names built
//! from the parity formula weights (46.8 MB, the size of the real file's float32 tensors); the
//! zip has d2l's layout with a few tiny JPEGs per class.
//!
//! `cargo test --release --test first_run -- --nocapture --test-threads 1` prints the requests
//! and the table of faults (case | exit code | message | cache after).

mod support;

#[allow(dead_code)]
#[path = "support/parity.rs"]
mod parity;

#[path = "support/loopback.rs"]
mod loopback;

use image::{Rgb, RgbImage};
use loopback::{sha1_hex, sha256_hex, Fault, Server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use transfer_workbook::models::Arch;

const REPO: &str = "timm/resnet18.tv_in1k";
const FILE: &str = "model.safetensors";
const REPO_DIR: &str = "models--timm--resnet18.tv_in1k";

/// The hub's file: ResNet-18 with timm's (= torchvision's) tensor names, formula weights.
fn hub_blob() -> Arc<Vec<u8>> {
    static BLOB: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    BLOB.get_or_init(|| {
        let w = parity::formula_weights(Arch::ResNet18);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        candle_core::safetensors::save(&w, &path).unwrap();
        Arc::new(std::fs::read(&path).unwrap())
    })
    .clone()
}

/// d2l's layout: `hotdog/{train,test}/{hotdog,not-hotdog}/*.jpg`, 4 JPEGs per class and split.
fn hotdog_zip() -> Arc<Vec<u8>> {
    static ZIP: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    ZIP.get_or_init(|| {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        for split in ["train", "test"] {
            for (class, base) in [("hotdog", [200u8, 60, 40]), ("not-hotdog", [40u8, 160, 60])] {
                for i in 0..4u32 {
                    let img = RgbImage::from_fn(40 + 4 * i, 36, |x, y| {
                        let v = ((x * 7 + y * 13 + i * 29) % 41) as i32 - 20;
                        Rgb(base.map(|c| (c as i32 + v).clamp(0, 255) as u8))
                    });
                    let mut jpg = std::io::Cursor::new(Vec::new());
                    img.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
                    z.start_file(format!("hotdog/{split}/{class}/{i}.jpg"), opts).unwrap();
                    z.write_all(jpg.get_ref()).unwrap();
                }
            }
        }
        z.finish().unwrap();
        Arc::new(buf.into_inner())
    })
    .clone()
}

fn start() -> Server {
    Server::start(REPO, FILE, hub_blob(), hotdog_zip())
}

/// The CLI in `cwd` with a clean environment for the downloads: HOME is `cwd` (nothing reaches
/// the real home), no proxy, no hub or d2l variable but those given.
fn finetune(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_finetune"));
    c.args(args).current_dir(cwd).env("RUST_BACKTRACE", "0").env("HOME", cwd);
    for v in [
        "HF_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "WORKBOOK_HOTDOG_URL", "XDG_CACHE_HOME", "HTTP_PROXY", "http_proxy",
        "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The error as the user reads it: the `error:` line and its causes, one line.
fn message(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:") || l.trim_start().starts_with("caused by:")).map(|l| l.trim()).collect();
    lines.join(" / ")
}

/// Every file under `root` (relative path and size; links with their target), or "empty".
fn cache_state(root: &Path) -> String {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if m.is_dir() {
                walk(&p, root, out);
            } else if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", std::fs::read_link(&p).unwrap().display()));
            } else {
                out.push(format!("{rel} ({} B)", m.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    if out.is_empty() {
        "empty".into()
    } else {
        out.join(", ")
    }
}

/// One row of the fault table, hashes shortened.
fn row(case: &str, o: &Output, cache: &Path, server: &Server) -> String {
    let short = |s: String| s.replace(&server.hub_sha256(), "<sha256>").replace(&server.hub_commit(), "<commit>").replace(&server.base, "http://127.0.0.1:PORT");
    let r = format!("| {case} | {} | {} | {} |", o.status.code().unwrap_or(-1), short(message(o)), short(cache_state(cache)));
    println!("{r}");
    r
}

fn online_env(server: &Server) -> Vec<(&'static str, String)> {
    vec![("HF_ENDPOINT", server.hub_url()), ("WORKBOOK_HOTDOG_URL", format!("{}#sha1={}", server.zip_url(), sha1_hex(&hotdog_zip())))]
}

const QUICK: [&str; 7] = ["--image-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet"];

fn args<'a>(head: &[&'a str]) -> Vec<&'a str> {
    head.iter().copied().chain(QUICK).collect()
}

fn history(path: &Path) -> Vec<serde_json::Value> {
    let h: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    h.as_array().unwrap().clone()
}

/// A port nothing listens on (bound, then closed).
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// Local data for the hub cases: nothing but the hub is asked.
fn local_data() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    support::write_color_dataset(d.path(), 4, 2);
    d
}

#[test]
fn first_run_downloads_and_caches_both_then_a_second_run_asks_nothing() {
    let server = start();
    let home = tempfile::tempdir().unwrap();
    let hf_home = home.path().join("hf");
    let mut env = online_env(&server);
    env.push(("HF_HOME", hf_home.display().to_string()));

    // No --data, no --weights, no --cache-dir: d2l's zip and the hub's ResNet-18.
    let o = finetune(home.path(), &args(&["finetune"]), &env);
    assert!(o.status.success(), "{}", text(&o));
    let first = server.requests();
    println!("first run, {} requests:\n  {}", first.len(), first.join("\n  "));
    let sha = server.hub_sha256();
    let resolve = format!("GET /{REPO}/resolve/main/{FILE}");
    assert_eq!(
        first,
        vec![
            "GET /d2l/hotdog.zip".to_string(),
            // hf-hub's metadata probe (commit, etag, size), then the redirect once more for the size.
            format!("{resolve} Range: bytes=0-0"),
            format!("GET /lfs/{sha} Range: bytes=0-0"),
            // The download: resolve again, redirected to the file store.
            format!("{resolve} Range: bytes=0-"),
            format!("GET /lfs/{sha} Range: bytes=0-"),
        ]
    );

    // Both cached where the README says: the zip (SHA-1 checked) and its folder under
    // .cache/data, the weights in hf-hub's layout under $HF_HOME/hub.
    let data = home.path().join(".cache/data");
    assert_eq!(transfer_workbook::data::download::sha1_file(&data.join("hotdog.zip")).unwrap(), sha1_hex(&hotdog_zip()));
    for split in ["train", "test"] {
        for class in ["hotdog", "not-hotdog"] {
            assert_eq!(std::fs::read_dir(data.join("hotdog").join(split).join(class)).unwrap().count(), 4);
        }
    }
    let repo_dir = hf_home.join("hub").join(REPO_DIR);
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), server.hub_commit());
    let snapshot = repo_dir.join("snapshots").join(server.hub_commit()).join(FILE);
    assert_eq!(transfer_workbook::checkpoint::hub::sha256_file(&snapshot).unwrap(), sha256_hex(&hub_blob()));
    println!("hub cache after the first run: {}", cache_state(&hf_home).replace(&sha, "<sha256>").replace(&server.hub_commit(), "<commit>"));

    // It trained (every tensor of timm's file used) and wrote its outputs under runs/finetune.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("were not used"), "{err}");
    let out = home.path().join("runs/finetune");
    for f in ["history.json", "curves.png", "curves.svg", "model.safetensors"] {
        assert!(out.join(f).is_file(), "missing runs/finetune/{f}");
    }
    let h1 = history(&out.join("history.json"));
    assert_eq!(h1.len(), 1);

    // Second run: everything from the caches, not one request; the same data and weights give
    // the same epoch bit for bit.
    let o = finetune(home.path(), &args(&["finetune", "--out", "runs/again"]), &env);
    assert!(o.status.success(), "{}", text(&o));
    let second = server.requests().len() - first.len();
    println!("second run: {second} requests");
    assert_eq!(second, 0, "{:?}", server.requests());
    let h2 = history(&home.path().join("runs/again/history.json"));
    for key in ["loss", "train_acc", "test_acc"] {
        assert_eq!(h1[0][key], h2[0][key], "{key}");
    }
    // And the cached file passed explicitly gives that epoch too: the first run trained from
    // the file it downloaded.
    let w = snapshot.to_str().unwrap();
    let o = finetune(home.path(), &args(&["finetune", "--weights", w, "--out", "runs/explicit"]), &env);
    assert!(o.status.success(), "{}", text(&o));
    let h3 = history(&home.path().join("runs/explicit/history.json"));
    for key in ["loss", "train_acc", "test_acc"] {
        assert_eq!(h1[0][key], h3[0][key], "{key}");
    }
    assert_eq!(server.requests().len(), first.len());
}

#[test]
fn hub_unreachable_or_failing_is_a_clear_error_and_caches_nothing() {
    let server = start();
    let data = local_data();
    let d = data.path().to_str().unwrap();
    for (case, fault, want) in [
        ("hub unreachable, empty cache", None, "could not reach the Hugging Face hub at http://127.0.0.1:"),
        ("hub answers 404", Some(Fault::Status(404)), "hf:timm/resnet18.tv_in1k/model.safetensors is not on the hub"),
        ("hub answers 500", Some(Fault::Status(500)), "the hub answered HTTP 500 Internal Server Error"),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let endpoint = match &fault {
            None => closed_port_url(),
            Some(f) => {
                server.set_hub_fault(f.clone());
                server.hub_url()
            }
        };
        let before = server.requests().len();
        let o = finetune(cache.path(), &args(&["finetune", "--data", d, "--cache-dir", "c"]), &[("HF_ENDPOINT", endpoint)]);
        row(case, &o, &cache.path().join("c"), &server);
        let msg = message(&o);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(msg.contains(want) && msg.contains("pass --weights FILE"), "{case}: {msg}");
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
        assert_eq!(cache_state(&cache.path().join("c")), "empty", "{case}");
        if fault.is_some() {
            // Only hf-hub's first probe: the error is not retried.
            assert_eq!(server.requests().len() - before, 1, "{:?}", server.requests());
        }
    }
}

#[test]
fn hub_download_cut_off_halfway_is_resumed_and_the_partial_file_never_used() {
    let server = start();
    let data = local_data();
    let d = data.path().to_str().unwrap();
    let size = hub_blob().len();
    let half = size / 2;
    let sha = server.hub_sha256();
    let cache = tempfile::tempdir().unwrap();
    let run = |c: &Path| finetune(c, &args(&["finetune", "--data", d, "--cache-dir", "c"]), &[("HF_ENDPOINT", server.hub_url())]);
    let blobs = cache.path().join("c/hub").join(REPO_DIR).join("blobs");

    server.set_hub_fault(Fault::Cut(half));
    let o = run(cache.path());
    row("hub download cut off halfway", &o, &cache.path().join("c"), &server);
    assert_eq!(o.status.code(), Some(1));
    let msg = message(&o);
    assert!(msg.contains("was cut off") && msg.contains("next run resumes") && msg.contains("pass --weights FILE"), "{msg}");
    // Only hf-hub's resumable .part (and its lock): no blob, no snapshot a later run could take.
    assert_eq!(std::fs::metadata(blobs.join(format!("{sha}.part"))).unwrap().len(), half as u64);
    assert!(!blobs.join(&sha).exists());
    assert!(!cache.path().join("c/hub").join(REPO_DIR).join("snapshots").exists());

    // The next run asks for the rest only, and checks the whole against the hub's SHA-256.
    let o = run(cache.path());
    row("next run after the cut", &o, &cache.path().join("c"), &server);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.requests().last().unwrap(), &format!("GET /lfs/{sha} Range: bytes={half}-"));
    let snapshot = cache.path().join("c/hub").join(REPO_DIR).join("snapshots").join(server.hub_commit()).join(FILE);
    assert_eq!(transfer_workbook::checkpoint::hub::sha256_file(&snapshot).unwrap(), sha);

    // A .part longer than the file (left by an older hf-hub or another tool): hf-hub alone
    // refuses it on every run ("Invalid part file"); it is removed and the file fetched whole.
    let cache = tempfile::tempdir().unwrap();
    let blobs = cache.path().join("c/hub").join(REPO_DIR).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.part")), vec![7u8; size + 10]).unwrap();
    let o = run(cache.path());
    row("stale .part longer than the file", &o, &cache.path().join("c"), &server);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.requests().last().unwrap(), &format!("GET /lfs/{sha} Range: bytes=0-"));
    assert!(!blobs.join(format!("{sha}.part")).exists());

    // A server that answers the resumed request with the whole file: hf-hub appends it to the
    // .part; the SHA-256 check throws the result away, and the run after starts over.
    let cache = tempfile::tempdir().unwrap();
    let blobs = cache.path().join("c/hub").join(REPO_DIR).join("blobs");
    server.set_hub_fault(Fault::Cut(half));
    assert!(!run(cache.path()).status.success());
    server.set_hub_fault(Fault::IgnoreResumeRange);
    let o = run(cache.path());
    row("resume answered with the whole file (Range ignored)", &o, &cache.path().join("c"), &server);
    assert_eq!(o.status.code(), Some(1));
    let msg = message(&o);
    assert!(msg.contains("SHA-256") && msg.contains(&sha) && msg.contains("discarded"), "{msg}");
    assert!(!blobs.join(&sha).exists() && !blobs.join(format!("{sha}.part")).exists(), "{}", cache_state(&cache.path().join("c")));
    server.set_hub_fault(Fault::None);
    let o = run(cache.path());
    row("next run after the bad resume", &o, &cache.path().join("c"), &server);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.requests().last().unwrap(), &format!("GET /lfs/{sha} Range: bytes=0-"));
}

#[test]
fn zip_faults_are_clear_errors_and_leave_no_partial_zip() {
    let server = start();
    // Local weights: only d2l's server is asked.
    let wdir = tempfile::tempdir().unwrap();
    let weights = wdir.path().join("resnet18.safetensors");
    std::fs::write(&weights, hub_blob().as_slice()).unwrap();
    let w = weights.to_str().unwrap();
    let good = sha1_hex(&hotdog_zip());
    let wrong = sha1_hex(b"another file");
    let cases: Vec<(&str, Option<Fault>, String, &str)> = vec![
        ("d2l server unreachable", None, format!("{}/d2l/hotdog.zip#sha1={good}", closed_port_url()), "Connection refused"),
        ("zip answers 404", Some(Fault::Status(404)), format!("{}#sha1={good}", server.zip_url()), "status code 404"),
        ("zip SHA-1 does not match", Some(Fault::None), format!("{}#sha1={wrong}", server.zip_url()), "SHA-1 mismatch"),
        // A mirror URL without #sha1= is held to d2l's own SHA-1.
        ("zip SHA-1 is not d2l's (no #sha1=)", Some(Fault::None), server.zip_url(), "expected fba480ffa8aa7e0febbb511d181409f899b9baa5"),
        ("WORKBOOK_HOTDOG_URL malformed", Some(Fault::None), format!("{}#md5=abc", server.zip_url()), "expected URL or URL#sha1=<40 hex digits>"),
    ];
    for (case, fault, url, want) in cases {
        let cache = tempfile::tempdir().unwrap();
        if let Some(f) = fault {
            server.set_zip_fault(f);
        }
        let o = finetune(cache.path(), &args(&["finetune", "--weights", w, "--cache-dir", "c"]), &[("WORKBOOK_HOTDOG_URL", url)]);
        row(case, &o, &cache.path().join("c"), &server);
        let msg = message(&o);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(msg.contains(want) && msg.contains("pass --data DIR"), "{case}: {msg}");
        assert!(!text(&o).contains("panicked"));
        // At most the empty cache folder: no zip, no .part, no half-unpacked folder.
        let state = cache_state(&cache.path().join("c"));
        assert_eq!(state, "empty", "{case}");
    }

    // Cut off halfway: nothing kept; the next run starts over and succeeds.
    let cache = tempfile::tempdir().unwrap();
    let env = [("WORKBOOK_HOTDOG_URL", format!("{}#sha1={good}", server.zip_url()))];
    let total = hotdog_zip().len();
    server.set_zip_fault(Fault::Cut(total / 2));
    let before = server.requests().len();
    let o = finetune(cache.path(), &args(&["finetune", "--weights", w, "--cache-dir", "c"]), &env);
    row("zip download cut off halfway", &o, &cache.path().join("c"), &server);
    assert_eq!(o.status.code(), Some(1));
    let msg = message(&o);
    assert!(msg.contains(&format!("the connection ended after {} of {total} bytes", total / 2)), "{msg}");
    assert_eq!(cache_state(&cache.path().join("c")), "empty");
    let o = finetune(cache.path(), &args(&["finetune", "--weights", w, "--cache-dir", "c"]), &env);
    row("next run after the cut", &o, &cache.path().join("c"), &server);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.requests()[before..], ["GET /d2l/hotdog.zip", "GET /d2l/hotdog.zip"]);
    assert!(cache.path().join("c/data/hotdog/train/hotdog/0.jpg").is_file());
}

#[test]
fn hf_hub_offline_uses_the_cache_only_and_says_so_without_it() {
    let server = start();
    let data = local_data();
    let d = data.path().to_str().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let offline = [("HF_ENDPOINT", server.hub_url()), ("HF_HUB_OFFLINE", "1".to_string())];
    // --overwrite: the offline run trains into the folder the online run filled.
    let run = |env: &[(&str, String)]| finetune(cache.path(), &args(&["finetune", "--data", d, "--cache-dir", "c", "--overwrite"]), env);

    let o = run(&offline);
    row("HF_HUB_OFFLINE=1, empty cache", &o, &cache.path().join("c"), &server);
    assert_eq!(o.status.code(), Some(1));
    let msg = message(&o);
    assert!(msg.contains("HF_HUB_OFFLINE is set and hf:timm/resnet18.tv_in1k/model.safetensors is not in the hub cache"), "{msg}");
    assert!(msg.contains("pass --weights FILE"), "{msg}");
    assert_eq!(server.requests().len(), 0);
    assert_eq!(cache_state(&cache.path().join("c")), "empty");

    // Fill the cache online, then offline again: it trains, and the hub hears nothing.
    assert!(run(&[("HF_ENDPOINT", server.hub_url())]).status.success());
    let online = server.requests().len();
    assert_eq!(online, 4);
    let o = run(&offline);
    row("HF_HUB_OFFLINE=1, file cached", &o, &cache.path().join("c"), &server);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.requests().len(), online);
}

#[test]
fn help_documents_the_download_variables() {
    let cwd = tempfile::tempdir().unwrap();
    for sub in ["finetune", "download"] {
        let o = finetune(cwd.path(), &[sub, "--help"], &[]);
        let s = text(&o);
        assert!(o.status.success(), "{s}");
        for v in ["WORKBOOK_HOTDOG_URL", "URL#sha1=HEX", "HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE"] {
            assert!(s.contains(v), "`finetune {sub} --help` does not mention {v}:\n{s}");
        }
    }
}
