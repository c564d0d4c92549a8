//! Blob storage behind a redirect: with distribution's `redirect` storage
//! middleware the registry answers blob GETs with a 307 to
//! `BASEURL/docker/registry/v2/blobs/.../data`, as registries on S3 or a
//! CDN do; this thread serves those paths from the registry's storage
//! directory (with Range requests) and logs what each request carried.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::listener::Listener;

/// What one request to the storage carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRequest {
    /// The path asked for.
    pub path: String,
    /// Whether it had an `Authorization` header.
    pub authorization: bool,
    /// Its `Range` header.
    pub range: Option<String>,
}

/// The storage server: a thread on 127.0.0.1, stopped on drop.
pub(super) struct StorageServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Every request served.
    pub log: Arc<Mutex<Vec<StorageRequest>>>,
    _listener: Listener,
}

impl StorageServer {
    /// Serves the files under `root`.
    pub fn start(root: PathBuf) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let listener = {
            let log = log.clone();
            Listener::spawn(move |stream| {
                let (root, log) = (root.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &log);
                });
            })
        };
        Self {
            addr: listener.addr.clone(),
            log,
            _listener: listener,
        }
    }
}

/// Answers one request on `stream` with the file under `root`.
fn serve(stream: TcpStream, root: &Path, log: &Mutex<Vec<StorageRequest>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let (mut authorization, mut range) = (false, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = true;
            } else if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    log.lock().unwrap().push(StorageRequest {
        path: path.clone(),
        authorization,
        range: range.clone(),
    });
    let file = root.join(path.trim_start_matches('/'));
    let mut stream = stream;
    let data = match std::fs::read(&file) {
        Ok(data) if !path.contains("..") => data,
        _ => {
            return write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            )
        }
    };
    let bounds = range.as_deref().map(|r| parse_range(r, data.len() as u64));
    let (status, start, end) = match bounds {
        Some(Some((start, end))) => ("206 Partial Content", start, end),
        Some(None) => {
            let len = data.len();
            return write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                 Content-Length: 0\r\n\r\n"
            );
        }
        None => ("200 OK", 0, data.len() as u64),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\
         Connection: close\r\n\r\n",
        end - start,
        end.max(1) - 1,
        data.len()
    )?;
    stream.write_all(&data[start as usize..end as usize])
}

/// `bytes=A-B` or `bytes=A-` as `[A, B+1)` within `len`.
fn parse_range(range: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        len
    } else {
        b.parse::<u64>().ok()? + 1
    };
    (start < end && end <= len).then_some((start, end))
}
