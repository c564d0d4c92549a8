//! A TCP relay on 127.0.0.1 in front of a server (the test registry), std
//! only, a thread per direction of each connection: it passes bytes as
//! they come, or at a rate set with [`Relay::set_rate`] (one byte per
//! second with [`Relay::trickle`]: a link alive but useless), and counts
//! the bytes the server sent.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the relay's threads share.
#[derive(Default)]
struct Shared {
    /// Server-to-client bytes per second; 0: as fast as they come.
    rate: AtomicU64,
    /// Stop accepting; drop connections.
    stop: AtomicBool,
    /// Bytes the server sent through the relay.
    from_server: AtomicU64,
    /// Every socket of every connection, shut down on drop.
    sockets: Mutex<Vec<TcpStream>>,
}

/// A relay listening on a free port of 127.0.0.1, stopped on drop (its
/// connections shut down).
pub struct Relay {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays each connection to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_string();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept(&listener, &upstream, &shared))
        };
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Limits the server's bytes to `rate` per second (`None`: no limit);
    /// applies at once, to open connections too (each on its own).
    pub fn set_rate(&self, rate: Option<u64>) {
        self.shared.rate.store(rate.unwrap_or(0), Ordering::SeqCst);
    }

    /// Turns the trickle (one server byte per second) on or off.
    pub fn trickle(&self, on: bool) {
        self.set_rate(on.then_some(1));
    }

    /// Bytes the server has sent through the relay so far.
    pub fn bytes_from_server(&self) -> u64 {
        self.shared.from_server.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // wakes accept()
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Accepts connections until told to stop, relaying each to `upstream`.
fn accept(listener: &TcpListener, upstream: &str, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        // The server down: the client sees its connection closed.
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        {
            let mut sockets = shared.sockets.lock().unwrap();
            sockets.extend([c2.try_clone().unwrap(), s2.try_clone().unwrap()]);
        }
        let up = Arc::clone(shared);
        std::thread::spawn(move || pump(client, server, &up, false));
        let down = Arc::clone(shared);
        std::thread::spawn(move || pump(s2, c2, &down, true));
    }
}

/// Copies `from` to `to` until either ends, then shuts both down; bytes
/// from the server (`downstream`) are counted, and sent at the rate set,
/// in pieces of a tenth of a second's worth.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, downstream: bool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if downstream {
            shared.from_server.fetch_add(n as u64, Ordering::SeqCst);
        }
        let mut sent = 0;
        while sent < n {
            let rate = if downstream {
                shared.rate.load(Ordering::SeqCst)
            } else {
                0
            };
            let piece = match rate {
                0 => n - sent,
                rate => ((rate / 10).max(1) as usize).min(n - sent),
            };
            if to.write_all(&buf[sent..sent + piece]).is_err() || shared.stop.load(Ordering::SeqCst)
            {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            sent += piece;
            if rate > 0 {
                let secs = piece as f64 / rate as f64;
                std::thread::sleep(Duration::from_secs_f64(secs));
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
