//! A TCP fault proxy between two node processes on 127.0.0.1. It forwards ractor_cluster's
//! length-prefixed frames (u64 big-endian length, then the payload) one by one, so it can
//! stall a direction (sockets stay open, bytes wait in kernel buffers: a silent partition),
//! cut every connection with a reset, and drop or duplicate single frames.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Which way a frame travels: from the dialling node to the listening node, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToListener,
    ToDialer,
}

impl Dir {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
struct Rules {
    stalled: [bool; 2],
    cut: bool,
    /// One-shot: the next frame containing the pattern is dropped (or sent twice).
    drop_next: [Vec<Vec<u8>>; 2],
    duplicate_next: [Vec<Vec<u8>>; 2],
    dropped: usize,
    duplicated: usize,
    /// Bumped by every cut: pumps of older connections stop.
    generation: u64,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Rules>,
    changed: Condvar,
    streams: Mutex<Vec<TcpStream>>,
}

/// Forwards connections from `addr()` to `target`. Runs until the test process exits.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> Self {
        // A port free a moment ago may be taken by the time it is bound: take the next one.
        let (port, listener) = (0..100)
            .find_map(|_| {
                let port = crate::process::free_port();
                Some((port, TcpListener::bind(("127.0.0.1", port)).ok()?))
            })
            .expect("bind the proxy");
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || accept_loop(listener, target, accepting));
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            shared,
        }
    }

    /// The address nodes dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops (or resumes) forwarding in one direction; sockets stay open.
    pub fn stall(&self, dir: Dir, stalled: bool) {
        self.update(|r| r.stalled[dir.index()] = stalled);
    }

    /// Stalls both directions: a silent, symmetric partition.
    pub fn partition(&self) {
        self.update(|r| r.stalled = [true, true]);
    }

    /// Ends every stall and cut.
    pub fn heal(&self) {
        self.update(|r| {
            r.stalled = [false, false];
            r.cut = false;
        });
    }

    /// Resets every connection and refuses new ones until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.update(|r| {
            r.cut = true;
            r.generation += 1;
        });
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Drops the next frame in `dir` whose bytes contain `pattern`.
    pub fn drop_next(&self, dir: Dir, pattern: &[u8]) {
        self.update(|r| r.drop_next[dir.index()].push(pattern.to_vec()));
    }

    /// Sends the next frame in `dir` whose bytes contain `pattern` twice.
    pub fn duplicate_next(&self, dir: Dir, pattern: &[u8]) {
        self.update(|r| r.duplicate_next[dir.index()].push(pattern.to_vec()));
    }

    /// Frames dropped and duplicated so far.
    pub fn tampered(&self) -> (usize, usize) {
        let rules = self.shared.rules.lock().unwrap();
        (rules.dropped, rules.duplicated)
    }

    fn update(&self, change: impl FnOnce(&mut Rules)) {
        change(&mut self.shared.rules.lock().unwrap());
        self.shared.changed.notify_all();
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        if shared.rules.lock().unwrap().cut {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            continue; // dropped: reset
        }
        let Ok(server) = TcpStream::connect(target) else {
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let generation = shared.rules.lock().unwrap().generation;
        for stream in [&client, &server] {
            if let Ok(clone) = stream.try_clone() {
                shared.streams.lock().unwrap().push(clone);
            }
        }
        let pumps = [
            (client.try_clone(), server.try_clone(), Dir::ToListener),
            (server.try_clone(), client.try_clone(), Dir::ToDialer),
        ];
        for (from, to, dir) in pumps {
            let (Ok(from), Ok(to)) = (from, to) else {
                continue;
            };
            let shared = shared.clone();
            std::thread::spawn(move || pump(from, to, dir, generation, &shared));
        }
    }
}

/// Forwards whole frames from `from` to `to`, applying the rules to each.
fn pump(mut from: TcpStream, mut to: TcpStream, dir: Dir, generation: u64, shared: &Shared) {
    while let Some(frame) = read_frame(&mut from) {
        let copies = {
            let mut rules = shared.rules.lock().unwrap();
            while rules.stalled[dir.index()] && rules.generation == generation {
                rules = shared.changed.wait(rules).unwrap();
            }
            if rules.generation != generation {
                break;
            }
            copies_of(&mut rules, dir, &frame)
        };
        for _ in 0..copies {
            if to.write_all(&frame).is_err() {
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn copies_of(rules: &mut Rules, dir: Dir, frame: &[u8]) -> usize {
    let contains = |p: &Vec<u8>| frame.windows(p.len().max(1)).any(|w| w == p.as_slice());
    let i = dir.index();
    if let Some(at) = rules.drop_next[i].iter().position(contains) {
        rules.drop_next[i].remove(at);
        rules.dropped += 1;
        return 0;
    }
    if let Some(at) = rules.duplicate_next[i].iter().position(contains) {
        rules.duplicate_next[i].remove(at);
        rules.duplicated += 1;
        return 2;
    }
    1
}

/// One frame, length prefix included; `None` at end of stream.
fn read_frame(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut prefix = [0u8; 8];
    from.read_exact(&mut prefix).ok()?;
    let len = usize::try_from(u64::from_be_bytes(prefix)).ok()?;
    let mut frame = Vec::with_capacity(8 + len.min(1 << 24));
    frame.extend_from_slice(&prefix);
    from.take(len as u64).read_to_end(&mut frame).ok()?;
    (frame.len() == 8 + len).then_some(frame)
}
