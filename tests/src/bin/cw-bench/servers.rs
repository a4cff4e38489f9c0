//! Loopback peers for the network loops, run in this (unwatched) process.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// A server thread that stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Accepts connections and closes them at once.
    pub fn accept_close() -> std::io::Result<Server> {
        Self::spawn(drop)
    }

    /// Echoes 4 KiB messages back on each connection (one thread per connection).
    pub fn echo() -> std::io::Result<Server> {
        Self::spawn(|mut s| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        })
    }

    /// One thread accepting in a blocking loop (a polling accept lets the backlog overflow,
    /// and a dropped SYN costs the client a one-second retransmit).
    fn spawn(handle: impl Fn(std::net::TcpStream) + Send + 'static) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(s) = conn {
                    handle(s);
                }
            }
        });
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
