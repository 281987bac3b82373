//! Loopback stand-ins for the two sites the first online run talks to, in one small HTTP/1.1
//! server on 127.0.0.1 (std only) that the tests start and stop:
//! - the Hugging Face hub as hf-hub 0.4.3 uses it: `GET /{repo}/resolve/main/{file}` answers
//!   302 to the file store with the hub's headers (`X-Repo-Commit`, `X-Linked-Etag` = the
//!   file's SHA-256, `X-Linked-Size`), as huggingface.co does for LFS files, and
//!   `GET /lfs/{sha256}` serves the bytes, honouring `Range` (206 + `Content-Range`);
//! - d2l's file server: `GET /d2l/hotdog.zip`.
//!
//! Every request is logged (method, path, `Range`), and faults are switched on between runs.

#![allow(dead_code)]

use sha2::Digest;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What goes wrong, per site; `Cut` cuts the next full body after that many bytes, once.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    None,
    Status(u16),
    Cut(usize),
    /// A request for a range that does not start at 0 is answered 200 with the whole file.
    IgnoreResumeRange,
}

pub struct Site {
    pub hub_repo: String,
    pub hub_file: String,
    pub hub_blob: Arc<Vec<u8>>,
    pub hub_sha256: String,
    pub hub_commit: String,
    pub zip: Arc<Vec<u8>>,
    pub hub_fault: Fault,
    pub zip_fault: Fault,
}

pub struct Server {
    pub base: String,
    site: Arc<Mutex<Site>>,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(bytes))
}

impl Server {
    /// Serves `hub_blob` as `{repo}/{file}` and `zip` as `/d2l/hotdog.zip`.
    pub fn start(repo: &str, file: &str, hub_blob: Arc<Vec<u8>>, zip: Arc<Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let site = Arc::new(Mutex::new(Site {
            hub_repo: repo.to_string(),
            hub_file: file.to_string(),
            hub_sha256: sha256_hex(&hub_blob),
            hub_blob,
            hub_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            zip,
            hub_fault: Fault::None,
            zip_fault: Fault::None,
        }));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, l, st) = (site.clone(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    handle(stream, &s, &l);
                }
            }
        });
        Server { base, site, log, stop, thread: Some(thread) }
    }

    pub fn hub_url(&self) -> String {
        self.base.clone()
    }

    pub fn zip_url(&self) -> String {
        format!("{}/d2l/hotdog.zip", self.base)
    }

    pub fn set_hub_fault(&self, f: Fault) {
        self.site.lock().unwrap().hub_fault = f;
    }

    pub fn set_zip_fault(&self, f: Fault) {
        self.site.lock().unwrap().zip_fault = f;
    }

    pub fn hub_sha256(&self) -> String {
        self.site.lock().unwrap().hub_sha256.clone()
    }

    pub fn hub_commit(&self) -> String {
        self.site.lock().unwrap().hub_commit.clone()
    }

    /// The requests so far: `GET /path [Range: ...]`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    cut_after: Option<usize>,
}

impl Reply {
    fn status(status: u16) -> Self {
        let body = Arc::new(format!("HTTP {status}\n").into_bytes());
        let n = body.len();
        Reply { status, headers: vec![("Content-Type".into(), "text/plain".into())], body, range: 0..n, cut_after: None }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn handle(stream: TcpStream, site: &Mutex<Site>, log: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // the wake-up connection of Drop
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let range = header("range");
    log.lock().unwrap().push(match &range {
        Some(r) => format!("{method} {path} Range: {r}"),
        None => format!("{method} {path}"),
    });
    let host = header("host").unwrap_or_default();
    let reply = route(&path, range.as_deref(), &host, &mut site.lock().unwrap());
    let mut stream = reader.into_inner();
    let len = reply.range.len();
    let mut head = format!("HTTP/1.1 {} {}\r\nContent-Length: {len}\r\nConnection: close\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let body = &reply.body[reply.range.clone()];
    let sent = reply.cut_after.map_or(body.len(), |c| c.min(body.len()));
    let _ = stream.write_all(&body[..sent]);
    let _ = stream.flush();
    // Dropping the stream closes the connection, after `sent` bytes when the body was cut.
}

/// `bytes=a-` or `bytes=a-b` of a `total`-byte file.
fn parse_range(r: &str, total: usize) -> Option<std::ops::Range<usize>> {
    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.parse().ok()?;
    let end = if b.is_empty() { total } else { b.parse::<usize>().ok()? + 1 };
    (start < total && start < end).then(|| start..end.min(total))
}

fn route(path: &str, range: Option<&str>, host: &str, site: &mut Site) -> Reply {
    let resolve = format!("/{}/resolve/main/{}", site.hub_repo, site.hub_file);
    let lfs = format!("/lfs/{}", site.hub_sha256);
    if path == "/d2l/hotdog.zip" {
        match site.zip_fault.clone() {
            Fault::Status(s) => return Reply::status(s),
            Fault::Cut(n) => {
                site.zip_fault = Fault::None;
                let total = site.zip.len();
                return Reply { status: 200, headers: vec![], body: site.zip.clone(), range: 0..total, cut_after: Some(n) };
            }
            _ => {}
        }
        let total = site.zip.len();
        return Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/zip".into())],
            body: site.zip.clone(),
            range: 0..total,
            cut_after: None,
        };
    }
    if path == resolve {
        if let Fault::Status(s) = site.hub_fault {
            return Reply::status(s);
        }
        // As huggingface.co answers for an LFS file: a redirect carrying the hub's headers.
        let mut r = Reply::status(302);
        r.headers = vec![
            ("Location".into(), format!("http://{host}{lfs}")),
            ("X-Repo-Commit".into(), site.hub_commit.clone()),
            ("X-Linked-Etag".into(), format!("\"{}\"", site.hub_sha256)),
            ("X-Linked-Size".into(), site.hub_blob.len().to_string()),
            ("ETag".into(), "\"5f2b9a4e1c0d3b7a6e8f9d0c1b2a3f4e5d6c7b8a\"".into()),
        ];
        return r;
    }
    if path == lfs {
        let total = site.hub_blob.len();
        let mut reply = Reply { status: 200, headers: vec![], body: site.hub_blob.clone(), range: 0..total, cut_after: None };
        if let Some(r) = range {
            let Some(want) = parse_range(r, total) else {
                let mut e = Reply::status(416);
                e.headers.push(("Content-Range".into(), format!("bytes */{total}")));
                return e;
            };
            let ignore = site.hub_fault == Fault::IgnoreResumeRange && want.start > 0;
            if !ignore {
                reply.status = 206;
                reply.headers.push(("Content-Range".into(), format!("bytes {}-{}/{total}", want.start, want.end - 1)));
                reply.range = want;
            }
        }
        // Only a body of more than one byte can be cut (not the 0-0 probe).
        if let Fault::Cut(n) = site.hub_fault {
            if reply.range.len() > 1 {
                site.hub_fault = Fault::None;
                reply.cut_after = Some(n);
            }
        }
        return reply;
    }
    Reply::status(404)
}
