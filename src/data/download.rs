//! d2l's `download_extract`: fetch a zip once into a cache folder, check its SHA-1, unpack.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// As in d2l's `DATA_HUB['hotdog']`.
pub const HOTDOG_URL: &str = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip";
pub const HOTDOG_SHA1: &str = "fba480ffa8aa7e0febbb511d181409f899b9baa5";

/// Where to get hotdog.zip instead (a mirror, a local server): `URL`, or `URL#sha1=HEX` for a
/// file other than d2l's (without the fragment, d2l's SHA-1 is expected).
pub const HOTDOG_URL_ENV: &str = "WORKBOOK_HOTDOG_URL";

/// The hot-dog zip's URL and expected SHA-1: d2l's, or those of `$WORKBOOK_HOTDOG_URL`.
pub fn hotdog_source() -> anyhow::Result<(String, String)> {
    let Some(value) = std::env::var(HOTDOG_URL_ENV).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok((HOTDOG_URL.to_string(), HOTDOG_SHA1.to_string()));
    };
    match value.trim().split_once('#') {
        None => Ok((value.trim().to_string(), HOTDOG_SHA1.to_string())),
        Some((url, fragment)) => {
            let sha = fragment.strip_prefix("sha1=").unwrap_or_default().to_ascii_lowercase();
            if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("{HOTDOG_URL_ENV}={value}: expected URL or URL#sha1=<40 hex digits>");
            }
            Ok((url.to_string(), sha))
        }
    }
}

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
/// bad download is never mistaken for a good one later; a failed one (cut off, wrong hash)
/// leaves nothing behind, and the next call starts over.
pub fn download(url: &str, sha1: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download");
    std::fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let dest = cache_dir.join(name);
    if dest.is_file() && sha1_file(&dest)? == sha1 {
        return Ok(dest);
    }
    // Proxies as hf-hub takes them (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY).
    let agent = ureq::AgentBuilder::new().try_proxy_from_env(true).build();
    let resp = agent.get(url).call().with_context(|| format!("downloading {url}"))?;
    let tmp = cache_dir.join(format!("{name}.part"));
    let got = save_hashing(resp, name, &tmp).with_context(|| format!("downloading {url}"));
    let got = match got {
        Ok(g) => g,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if got != sha1 {
        let _ = std::fs::remove_file(&tmp);
        bail!("{url}: SHA-1 mismatch, expected {sha1}, got {got} (the download was discarded)");
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving the download to {}", dest.display()))?;
    Ok(dest)
}

/// The body of `resp` into `tmp`, with a progress bar; its SHA-1. A body shorter than its
/// Content-Length is an error (ureq: "response body closed before all bytes were read").
fn save_hashing(resp: ureq::Response, name: &str, tmp: &Path) -> anyhow::Result<String> {
    let total: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let bar = ProgressBar::new(total.unwrap_or(0)).with_message(format!("downloading {name}"));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut reader = resp.into_reader();
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = reader.read(&mut buf).with_context(|| match total {
            Some(t) => format!("the connection ended after {received} of {t} bytes"),
            None => format!("the connection ended after {received} bytes"),
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| format!("writing {}", tmp.display()))?;
        received += n as u64;
        bar.inc(n as u64);
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(hex::encode(h.finalize()))
}

/// Download and unpack a zip; returns the folder it unpacked (d2l: `data/hotdog`).
/// Once unpacked (a marker file names the zip's SHA-1), later calls return at once: no
/// request, and no re-hashing of the zip. The zip is unpacked into a temporary folder first
/// and moved into place whole, so an interrupted unpacking is never taken for the data.
pub fn download_extract(url: &str, sha1: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download");
    let stem = Path::new(name).file_stem().and_then(|s| s.to_str()).unwrap_or("data").to_string();
    let target = cache_dir.join(&stem);
    let marker = cache_dir.join(format!(".{stem}.{sha1}.extracted"));
    if target.is_dir() && marker.is_file() {
        return Ok(target);
    }
    let zip_path = download(url, sha1, cache_dir)?;
    let tmp = cache_dir.join(format!(".{stem}.extracting"));
    let _ = std::fs::remove_dir_all(&tmp);
    let unpacked = (|| {
        let f = std::fs::File::open(&zip_path)?;
        let mut archive = zip::ZipArchive::new(f).with_context(|| format!("{} is not a zip archive", zip_path.display()))?;
        archive.extract(&tmp).with_context(|| format!("extracting {}", zip_path.display()))?;
        if !tmp.join(&stem).is_dir() {
            bail!("{} did not contain a top-level '{stem}/' folder", zip_path.display());
        }
        if target.exists() {
            // Markers of what was there before (another zip's SHA-1) go with it.
            for e in std::fs::read_dir(cache_dir)?.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&format!(".{stem}.")) && n.ends_with(".extracted") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            std::fs::remove_dir_all(&target).with_context(|| format!("removing the stale {}", target.display()))?;
        }
        std::fs::rename(tmp.join(&stem), &target).with_context(|| format!("moving the data to {}", target.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    unpacked?;
    std::fs::write(&marker, b"")?;
    Ok(target)
}

/// The d2l hot-dog data set (`hotdog/{train,test}/{hotdog,not-hotdog}`), downloaded once
/// (from `$WORKBOOK_HOTDOG_URL` when set: [`hotdog_source`]).
pub fn hotdog(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let (url, sha1) = hotdog_source()?;
    download_extract(&url, &sha1, cache_dir)
}
