//! d2l's `download_extract`: fetch an archive once into a cache folder, check it (d2l's SHA-1
//! for hotdog.zip; size and SHA-256 for TensorFlow's flower_photos.tgz), unpack it.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sha1::{Digest, Sha1};
use sha2::Sha256;
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

/// TensorFlow's flower photos (the Keras lesson's exercise data): URL, size and SHA-256 as
/// TensorFlow Datasets' `url_checksums/tf_flowers.txt` gives them.
pub const FLOWERS_URL: &str = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz";
pub const FLOWERS_SIZE: u64 = 228_813_984;
pub const FLOWERS_SHA256: &str = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c";
/// Where to get flower_photos.tgz instead: `URL`, or `URL#sha256=HEX` (with `&size=BYTES`
/// optionally) for a file other than TensorFlow's.
pub const FLOWERS_URL_ENV: &str = "WORKBOOK_FLOWERS_URL";

/// What a download must be: its hash, and its size in bytes where known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub hash: Hash,
    pub size: Option<u64>,
}

/// A file's expected hash, lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1(String),
    Sha256(String),
}

impl Hash {
    fn name(&self) -> &'static str {
        match self {
            Hash::Sha1(_) => "SHA-1",
            Hash::Sha256(_) => "SHA-256",
        }
    }

    fn hex(&self) -> &str {
        match self {
            Hash::Sha1(h) | Hash::Sha256(h) => h,
        }
    }
}

/// A running hash of the kind `Hash` names.
enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn new(kind: &Hash) -> Self {
        match kind {
            Hash::Sha1(_) => Hasher::Sha1(Sha1::new()),
            Hash::Sha256(_) => Hasher::Sha256(Sha256::new()),
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

/// The flower archive's URL and what it must be: TensorFlow's, or `$WORKBOOK_FLOWERS_URL`'s.
pub fn flowers_source() -> anyhow::Result<(String, Expected)> {
    let default = Expected { hash: Hash::Sha256(FLOWERS_SHA256.into()), size: Some(FLOWERS_SIZE) };
    let Some(value) = std::env::var(FLOWERS_URL_ENV).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok((FLOWERS_URL.to_string(), default));
    };
    let bad = || anyhow::anyhow!("{FLOWERS_URL_ENV}={value}: expected URL or URL#sha256=<64 hex digits>[&size=<bytes>]");
    match value.trim().split_once('#') {
        None => Ok((value.trim().to_string(), default)),
        Some((url, fragment)) => {
            let (mut sha, mut size) = (None, None);
            for kv in fragment.split('&') {
                match kv.split_once('=') {
                    Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => sha = Some(h.to_ascii_lowercase()),
                    Some(("size", n)) => size = Some(n.parse::<u64>().map_err(|_| bad())?),
                    _ => return Err(bad()),
                }
            }
            Ok((url.to_string(), Expected { hash: Hash::Sha256(sha.ok_or_else(bad)?), size }))
        }
    }
}

pub fn sha1_file(path: &Path) -> anyhow::Result<String> {
    hash_file(path, &Hash::Sha1(String::new()))
}

/// The hex hash of a file's bytes, of the kind `kind` names.
fn hash_file(path: &Path, kind: &Hash) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Hasher::new(kind);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.hex())
}

/// Download `url` into `cache_dir` unless a file with the right SHA-1 is already there.
/// The file is written under a temporary name and only renamed once its hash matches, so a
/// bad download is never mistaken for a good one later; a failed one (cut off, wrong hash)
/// leaves nothing behind, and the next call starts over.
pub fn download(url: &str, sha1: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    download_checked(url, &Expected { hash: Hash::Sha1(sha1.to_string()), size: None }, cache_dir)
}

/// [`download`] for any [`Expected`]: a size, where given, is checked against the server's
/// Content-Length before anything is written and against the bytes received after.
pub fn download_checked(url: &str, expected: &Expected, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download");
    std::fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let dest = cache_dir.join(name);
    let sized = |p: &Path| expected.size.is_none_or(|n| std::fs::metadata(p).is_ok_and(|m| m.len() == n));
    if dest.is_file() && sized(&dest) && hash_file(&dest, &expected.hash)? == expected.hash.hex() {
        return Ok(dest);
    }
    // Proxies as hf-hub takes them (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY).
    let agent = ureq::AgentBuilder::new().try_proxy_from_env(true).build();
    let resp = agent.get(url).call().with_context(|| format!("downloading {url}"))?;
    if let (Some(want), Some(offered)) = (expected.size, resp.header("Content-Length").and_then(|v| v.parse::<u64>().ok())) {
        if want != offered {
            bail!("{url}: the server offers {offered} bytes, expected {want} (nothing was downloaded)");
        }
    }
    let tmp = cache_dir.join(format!("{name}.part"));
    let got = save_hashing(resp, name, &tmp, Hasher::new(&expected.hash)).with_context(|| format!("downloading {url}"));
    let got = match got {
        Ok(g) => g,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let (got, received) = got;
    if let Some(want) = expected.size.filter(|&n| n != received) {
        let _ = std::fs::remove_file(&tmp);
        bail!("{url}: {received} bytes received, expected {want} (the download was discarded)");
    }
    if got != expected.hash.hex() {
        let _ = std::fs::remove_file(&tmp);
        bail!("{url}: {} mismatch, expected {}, got {got} (the download was discarded)", expected.hash.name(), expected.hash.hex());
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving the download to {}", dest.display()))?;
    Ok(dest)
}

/// The body of `resp` into `tmp`, with a progress bar; its hash and length. A body shorter
/// than its Content-Length is an error (ureq: "response body closed before all bytes were read").
fn save_hashing(resp: ureq::Response, name: &str, tmp: &Path, mut h: Hasher) -> anyhow::Result<(String, u64)> {
    let total: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let bar = ProgressBar::new(total.unwrap_or(0)).with_message(format!("downloading {name}"));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut reader = resp.into_reader();
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
    Ok((h.hex(), received))
}

/// Download and unpack a zip; returns the folder it unpacked (d2l: `data/hotdog`).
/// Once unpacked (a marker file names the zip's SHA-1), later calls return at once: no
/// request, and no re-hashing of the zip. The zip is unpacked into a temporary folder first
/// and moved into place whole, so an interrupted unpacking is never taken for the data.
pub fn download_extract(url: &str, sha1: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let expected = Expected { hash: Hash::Sha1(sha1.to_string()), size: None };
    download_unpack(url, &expected, cache_dir, |archive, tmp| {
        let f = std::fs::File::open(archive)?;
        let mut zip = zip::ZipArchive::new(f).with_context(|| format!("{} is not a zip archive", archive.display()))?;
        zip.extract(tmp).with_context(|| format!("extracting {}", archive.display()))
    })
}

/// Download `url` (checked as `expected`) and unpack it with `unpack(archive, into)`; the
/// archive must hold one top-level folder named like it (`hotdog/`, `flower_photos/`),
/// which is moved into `cache_dir` whole (see [`download_extract`]).
fn download_unpack(url: &str, expected: &Expected, cache_dir: &Path, unpack: impl FnOnce(&Path, &Path) -> anyhow::Result<()>) -> anyhow::Result<PathBuf> {
    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download");
    let stem = name.split('.').next().filter(|s| !s.is_empty()).unwrap_or("data").to_string();
    let target = cache_dir.join(&stem);
    let marker = cache_dir.join(format!(".{stem}.{}.extracted", expected.hash.hex()));
    if target.is_dir() && marker.is_file() {
        return Ok(target);
    }
    let archive = download_checked(url, expected, cache_dir)?;
    let tmp = cache_dir.join(format!(".{stem}.extracting"));
    let _ = std::fs::remove_dir_all(&tmp);
    let unpacked = (|| {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        unpack(&archive, &tmp)?;
        if !tmp.join(&stem).is_dir() {
            bail!("{} did not contain a top-level '{stem}/' folder", archive.display());
        }
        if target.exists() {
            // Markers of what was there before (another archive's hash) go with it.
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

/// Unpack a gzipped tar into `into`: plain files and folders only. An entry whose path is
/// absolute or climbs out (`..`), a link (symbolic or hard), a device or a FIFO is refused,
/// naming the entry, before anything of it is written.
pub fn unpack_tgz(archive: &Path, into: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    let shown = archive.display();
    for entry in tar.entries().with_context(|| format!("{shown} is not a gzipped tar archive"))? {
        let mut entry = entry.with_context(|| format!("reading {shown} (cut off or corrupt?)"))?;
        let path = entry.path().with_context(|| format!("{shown}: an entry with an unreadable name"))?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let inside = path.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        if !inside || path.as_os_str().is_empty() {
            bail!("{shown}: entry '{}' would be written outside the target folder: refused (nothing of the archive is kept)", path.display());
        }
        let dest = into.join(&path);
        if kind.is_dir() {
            std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
        } else if kind.is_file() {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            let mut out = std::fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
            std::io::copy(&mut entry, &mut out).with_context(|| format!("unpacking '{}' from {shown} (cut off or corrupt?)", path.display()))?;
        } else {
            let what = if kind.is_symlink() || kind.is_hard_link() { "a link" } else if kind.is_character_special() || kind.is_block_special() { "a device" } else if kind.is_fifo() { "a FIFO" } else { "not a plain file or folder" };
            bail!("{shown}: entry '{}' is {what}: refused (only plain files and folders are unpacked; nothing of the archive is kept)", path.display());
        }
    }
    Ok(())
}

/// TensorFlow's flower photos (`flower_photos/<class>/*.jpg` and `LICENSE.txt`), downloaded
/// once, size and SHA-256 checked before unpacking (from `$WORKBOOK_FLOWERS_URL` when set:
/// [`flowers_source`]). An unsplit folder of classes: train on it with `--split`.
pub fn flowers(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let (url, expected) = flowers_source()?;
    download_extract_tgz(&url, &expected, cache_dir)
}

/// A gzipped tar holding one top-level folder named like it, downloaded and checked as
/// `expected`, unpacked by [`unpack_tgz`] into a temporary folder and moved into place (as
/// [`download_extract`] does for a zip); returns the folder.
pub fn download_extract_tgz(url: &str, expected: &Expected, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    download_unpack(url, expected, cache_dir, unpack_tgz)
}

/// The d2l hot-dog data set (`hotdog/{train,test}/{hotdog,not-hotdog}`), downloaded once
/// (from `$WORKBOOK_HOTDOG_URL` when set: [`hotdog_source`]).
pub fn hotdog(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let (url, sha1) = hotdog_source()?;
    download_extract(&url, &sha1, cache_dir)
}
