//! Files of Hugging Face hub repositories, through hf-hub 0.4.3 and its cache (the layout
//! Python's `huggingface_hub` shares), with what that version leaves out:
//! - `HF_HUB_OFFLINE` (0.4.3 reads only `HF_HOME` and `HF_ENDPOINT`): with it set, the cache is
//!   the only source and nothing is requested;
//! - a SHA-256 check of each download against the hub's etag (for LFS files, like every
//!   `model.safetensors`, the etag is the file's SHA-256): 0.4.3 checks neither size nor hash,
//!   and a resumed download appends whatever the server sends to its `.part` file;
//! - errors that say what happened (unreachable, HTTP status, cut off) and how to go on
//!   without the hub (`--weights FILE`).
//!
//! What a download asks for (logged on the loopback hub of `tests/first_run.rs`): 0.4.3 never
//! calls the info (`/api/models/...`) route; it sends `GET {endpoint}/{repo}/resolve/main/{file}`
//! with `Range: bytes=0-0` for the commit, etag and size (following the hub's redirect to its
//! file store once more with the same range), then the file with `Range: bytes=N-` where N is
//! the size of an earlier `.part` file (0 for a first try).

use anyhow::{bail, Context};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The hub's address: `HF_ENDPOINT`, or huggingface.co.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.trim().is_empty()).unwrap_or_else(|| "https://huggingface.co".into())
}

/// `HF_HUB_OFFLINE`, read as `huggingface_hub` reads it: 1, ON, YES or TRUE in any case.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

/// The hub cache: `cache_dir` when given, else hf-hub's (`$HF_HOME/hub`, or `~/.cache/huggingface/hub`).
pub fn cache(cache_dir: Option<&Path>) -> Cache {
    match cache_dir {
        Some(d) => Cache::new(d.to_path_buf()),
        None => Cache::from_env(),
    }
}

/// `file` of the model repository `repo` (revision `main`): from the cache when it is there
/// (no request at all), else downloaded into the cache and checked.
pub fn fetch(repo: &str, file: &str, cache_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let cache = cache(cache_dir);
    let name = format!("hf:{repo}/{file}");
    if let Some(path) = cache.model(repo.to_string()).get(file) {
        return Ok(path);
    }
    if offline() {
        bail!(
            "HF_HUB_OFFLINE is set and {name} is not in the hub cache {}: run once online to fill the cache, \
             or pass --weights FILE with a local copy",
            cache.path().display()
        );
    }
    let endpoint = endpoint();
    let api = ApiBuilder::from_cache(cache.clone())
        .with_token(token())
        .with_endpoint(endpoint.clone())
        .with_progress(true)
        .build()
        .context("setting up the Hugging Face hub client")?;
    let api_repo = api.model(repo.to_string());
    let url = api_repo.url(file);
    let blobs = cache.path().join(Repo::model(repo.to_string()).folder_name()).join("blobs");
    let result = match api_repo.download(file) {
        // A `.part` longer than the file (hf-hub appended a whole answer to it): hf-hub would
        // refuse it on every run; start over.
        Err(ApiError::InvalidResume) => {
            remove_partial_files(&blobs);
            api_repo.download(file)
        }
        r => r,
    };
    let path = result.map_err(|e| explain(e, &name, &url, &endpoint, &blobs))?;
    verify(&path, &url)?;
    Ok(path)
}

/// `HF_TOKEN`, else the token `huggingface-cli login` saved under `HF_HOME` (hf-hub 0.4.3 reads
/// only the file, and beside the cache folder, which `--cache-dir` moves).
fn token() -> Option<String> {
    std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).or_else(|| Cache::from_env().token())
}

const LOCAL_COPY: &str = "pass --weights FILE with a local copy (.safetensors or .pth)";

/// An hf-hub error as what happened and what to do.
fn explain(e: ApiError, name: &str, url: &str, endpoint: &str, blobs: &Path) -> anyhow::Error {
    match e {
        ApiError::RequestError(err) => match *err {
            ureq::Error::Status(code, resp) if code == 401 || code == 403 => anyhow::anyhow!(
                "the hub refused {url} (HTTP {code} {}): the repository does not exist, or is gated or private and needs a token \
                 (HF_TOKEN, or `huggingface-cli login`); or {LOCAL_COPY}",
                resp.status_text()
            ),
            ureq::Error::Status(404, _) => anyhow::anyhow!("{name} is not on the hub ({url}: HTTP 404 Not Found); check the repository and file name, or {LOCAL_COPY}"),
            ureq::Error::Status(code, resp) => anyhow::anyhow!(
                "the hub answered HTTP {code} {} for {url}: try again later, or {LOCAL_COPY}",
                resp.status_text()
            ),
            ureq::Error::Transport(t) => anyhow::anyhow!(
                "could not reach the Hugging Face hub at {endpoint} for {name} ({t}); check the connection \
                 (or HF_ENDPOINT), or {LOCAL_COPY} (HF_HUB_OFFLINE=1 uses only the cache)"
            ),
        },
        // The body ended early (ureq: "response body closed before all bytes were read") or the
        // connection broke; other I/O errors are the cache's own (permissions, disk full).
        ApiError::IoError(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            let kept: u64 = partial_files(blobs).iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum();
            anyhow::anyhow!(
                "the download of {url} was cut off ({io}); the {kept} bytes received are kept as a .part file in {} \
                 and the next run resumes from there; or {LOCAL_COPY}",
                blobs.display()
            )
        }
        ApiError::IoError(io) => anyhow::anyhow!("could not write {name} into the hub cache {}: {io}", blobs.display()),
        other => anyhow::Error::new(other).context(format!("could not get {name} from {url}; {LOCAL_COPY}")),
    }
}

fn partial_files(blobs: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(blobs) else { return Vec::new() };
    rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "part")).collect()
}

fn remove_partial_files(blobs: &Path) {
    for p in partial_files(blobs) {
        let _ = std::fs::remove_file(p);
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A fresh download against its etag, when the etag is a SHA-256 (LFS files); on a mismatch
/// the blob and its snapshot link are removed, so the cache never offers it again.
fn verify(pointer: &Path, url: &str) -> anyhow::Result<()> {
    let blob = std::fs::canonicalize(pointer).with_context(|| format!("resolving {}", pointer.display()))?;
    let etag = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let got = sha256_file(&blob)?;
    if got != etag.to_ascii_lowercase() {
        let _ = std::fs::remove_file(pointer);
        let _ = std::fs::remove_file(&blob);
        bail!("{url}: the download's SHA-256 is {got}, the hub announced {etag}; the file was discarded, run again to download it afresh");
    }
    Ok(())
}
