//! d2l's `download_extract`: fetch a zip once into a cache folder, check its SHA-1, unpack.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// As in d2l's `DATA_HUB['hotdog']`.
pub const HOTDOG_URL: &str = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip";
pub const HOTDOG_SHA1: &str = "fba480ffa8aa7e0febbb511d181409f899b9baa5";

pub fn sha1_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Download `url` into `cache_dir` unless a file with the right SHA-1 is already there.
/// The file is written under a temporary name and only renamed once its hash matches, so a
/// bad download is never mistaken for a good one later.
pub fn download(url: &str, sha1: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download");
    std::fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let dest = cache_dir.join(name);
    if dest.is_file() && sha1_file(&dest)? == sha1 {
        return Ok(dest);
    }
    let resp = ureq::get(url).call().with_context(|| format!("downloading {url}"))?;
    let total: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let bar = ProgressBar::new(total.unwrap_or(0)).with_message(format!("downloading {name}"));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let tmp = cache_dir.join(format!("{name}.part"));
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut reader = resp.into_reader();
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    out.flush()?;
    drop(out);
    bar.finish_and_clear();
    let got = hex::encode(h.finalize());
    if got != sha1 {
        let _ = std::fs::remove_file(&tmp);
        bail!("{url}: SHA-1 mismatch, expected {sha1}, got {got} (the download was discarded)");
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving the download to {}", dest.display()))?;
    Ok(dest)
}

/// Download and unpack a zip; returns the folder it unpacked (d2l: `data/hotdog`).
pub fn download_extract(url: &str, sha1: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let zip_path = download(url, sha1, cache_dir)?;
    let stem = zip_path.file_stem().and_then(|s| s.to_str()).unwrap_or("data").to_string();
    let target = cache_dir.join(&stem);
    let marker = cache_dir.join(format!(".{stem}.{sha1}.extracted"));
    if target.is_dir() && marker.is_file() {
        return Ok(target);
    }
    let f = std::fs::File::open(&zip_path)?;
    let mut archive = zip::ZipArchive::new(f).with_context(|| format!("{} is not a zip archive", zip_path.display()))?;
    archive.extract(cache_dir).with_context(|| format!("extracting {}", zip_path.display()))?;
    if !target.is_dir() {
        bail!("{} did not contain a top-level '{stem}/' folder", zip_path.display());
    }
    std::fs::write(&marker, b"")?;
    Ok(target)
}

/// The d2l hot-dog data set (`hotdog/{train,test}/{hotdog,not-hotdog}`), downloaded once.
pub fn hotdog(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    download_extract(HOTDOG_URL, HOTDOG_SHA1, cache_dir)
}
