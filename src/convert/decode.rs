//! A compressed input decoded on its own thread: the thread reads (and
//! hashes) the compressed bytes and inflates them, while the converting
//! thread hashes the tar, copies it and parses it. The two halves cost
//! about the same, so a tar.gz converts in about half the time.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use super::input::TarRead;

/// Bytes the decoding thread hands over at a time.
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the threads (with the two being filled and
/// read, the memory is bounded to 1.5 MiB).
const DEPTH: usize = 4;

/// A hash shared with the thread that feeds it.
pub type SharedHash = Arc<Mutex<Sha256>>;

/// The finished value of a shared hash.
pub fn finish(hash: &SharedHash) -> [u8; 32] {
    let hasher = hash.lock().unwrap_or_else(|p| p.into_inner());
    hasher.clone().finalize().into()
}

/// The decoded stream, received from the decoding thread in chunks, each
/// hashed (the tar digest) as it arrives.
pub struct Decoded {
    chunks: Receiver<io::Result<Vec<u8>>>,
    spent: Sender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    tar_hash: Option<SharedHash>,
    thread: Option<JoinHandle<()>>,
    /// The decoder's error, repeated to later reads.
    failed: Option<String>,
}

impl Decoded {
    /// Starts decoding `make_decoder()`'s output on a new thread; with
    /// `tar_hash`, the decoded bytes are hashed into it.
    pub fn start<F>(make_decoder: F, tar_hash: Option<SharedHash>) -> io::Result<Self>
    where
        F: FnOnce() -> io::Result<Box<dyn Read>> + Send + 'static,
    {
        let (send, chunks) = mpsc::sync_channel(DEPTH);
        let (spent, reuse) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || decode(make_decoder, &send, &reuse))?;
        Ok(Self {
            chunks,
            spent,
            chunk: Vec::new(),
            at: 0,
            tar_hash,
            thread: Some(thread),
            failed: None,
        })
    }

    /// The next chunk into `self.chunk`; `false` at the end of the stream.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(why.clone()));
        }
        match self.chunks.recv() {
            Ok(Ok(chunk)) => {
                if let Some(hash) = &self.tar_hash {
                    hash.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .update(&chunk);
                }
                let old = std::mem::replace(&mut self.chunk, chunk);
                let _ = self.spent.send(old);
                self.at = 0;
                Ok(true)
            }
            Ok(Err(e)) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
            // The thread is done: the stream ended.
            Err(_) => {
                if let Some(thread) = self.thread.take() {
                    thread
                        .join()
                        .map_err(|_| io::Error::other("the decoding thread panicked"))?;
                }
                Ok(false)
            }
        }
    }
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl TarRead for Decoded {
    /// Skips within the chunks received: no copy.
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let mut skipped = 0;
        while skipped < n {
            if self.at == self.chunk.len() && !self.next_chunk()? {
                break;
            }
            let step = (self.chunk.len() - self.at)
                .min(usize::try_from(n - skipped).unwrap_or(usize::MAX));
            self.at += step;
            skipped += step as u64;
        }
        Ok(skipped)
    }
}

/// The decoding thread: fills chunks (reusing the ones given back) until
/// the stream ends, an error (sent on), or the receiver is gone.
fn decode<F>(make_decoder: F, send: &SyncSender<io::Result<Vec<u8>>>, reuse: &Receiver<Vec<u8>>)
where
    F: FnOnce() -> io::Result<Box<dyn Read>>,
{
    let mut decoder = match make_decoder() {
        Ok(decoder) => decoder,
        Err(e) => {
            let _ = send.send(Err(e));
            return;
        }
    };
    loop {
        let mut chunk = reuse.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // What decoded before the error first: the parser then
                    // fails in the member that is really cut.
                    chunk.truncate(filled);
                    if filled > 0 && send.send(Ok(chunk)).is_err() {
                        return;
                    }
                    let _ = send.send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        chunk.truncate(filled);
        if send.send(Ok(chunk)).is_err() {
            return;
        }
    }
}
