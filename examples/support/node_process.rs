//! Drives `examples/node.rs` processes over stdin/stdout: shared by the quickstart and the
//! cluster tests, which include this file with `#[path]`.
#![allow(dead_code)] // each includer uses a different part

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one command may take before the driver gives up on the node.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    /// A SQLite file, or a `postgres://` URL.
    pub db: PathBuf,
    /// Where the node's stderr goes (`NAME.PORT.log`).
    pub log_dir: PathBuf,
    pub cookie: String,
    pub extra: Vec<String>,
}

impl NodeSpec {
    /// A node on a free loopback port sharing `db`.
    pub fn new(name: &str, db: &Path) -> Self {
        Self {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            peers: Vec::new(),
            db: db.to_owned(),
            log_dir: db.parent().map_or_else(std::env::temp_dir, Path::to_owned),
            cookie: "test-cookie-0123456789abcdef".to_owned(),
            extra: Vec::new(),
        }
    }

    pub fn peer(mut self, other: &NodeSpec) -> Self {
        self.peers.push(other.listen);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }
}

/// A running node process. Killed when dropped.
pub struct NodeProcess {
    pub spec: NodeSpec,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl NodeProcess {
    /// Starts the node and waits for its `ready` line.
    pub fn start(spec: &NodeSpec) -> Result<Self, String> {
        let log = std::fs::File::create(log_path(spec)).map_err(|e| e.to_string())?;
        let mut command = Command::new(node_binary());
        command
            .args(["--name", &spec.name, "--listen", &spec.listen.to_string()])
            .arg("--db")
            .arg(&spec.db)
            .args(
                spec.peers
                    .iter()
                    .flat_map(|p| ["--peer".to_owned(), p.to_string()]),
            )
            .args(&spec.extra)
            .env("RACTOR_CACHE_SYNC_COOKIE", &spec.cookie)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", node_binary().display()))?;
        let stdin = child.stdin.take();
        let lines = read_lines(child.stdout.take().expect("stdout is piped"));
        let mut node = Self {
            spec: spec.clone(),
            child,
            stdin,
            lines,
        };
        let ready = node.next_reply()?;
        if ready["ok"] != "ready" {
            return Err(format!("{} did not start: {ready}", spec.name));
        }
        Ok(node)
    }

    /// Sends one command line and returns its one-line JSON reply.
    pub fn request(&mut self, line: &str) -> Result<Value, String> {
        self.send_raw(format!("{line}\n").as_bytes())?;
        self.next_reply()
    }

    /// Like [`request`], panicking with the node's name on failure (for tests).
    pub fn ask(&mut self, line: &str) -> Value {
        self.request(line)
            .unwrap_or_else(|e| panic!("{} failed on {line:?}: {e}", self.spec.name))
    }

    /// Writes bytes to the node's stdin as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{} stdin: {e}", self.spec.name))
    }

    /// Waits for the next reply line (after [`send_raw`]).
    pub fn next_reply(&mut self) -> Result<Value, String> {
        let line = match self.lines.recv_timeout(REPLY_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => return Err("no reply within the timeout".into()),
            Err(RecvTimeoutError::Disconnected) => return Err("the node exited".into()),
        };
        serde_json::from_str(&line).map_err(|e| format!("reply {line:?} is not JSON: {e}"))
    }

    /// Names of the peers with a ready session.
    pub fn peers(&mut self) -> Vec<String> {
        let reply = self.ask("peers");
        let peers = reply["peers"].as_array().cloned().unwrap_or_default();
        peers
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect()
    }

    /// The `get` reply's value, if any.
    pub fn value(&mut self, key: &str) -> Option<String> {
        self.ask(&format!("get {key}"))["value"]
            .as_str()
            .map(str::to_owned)
    }

    /// A counter from the `stats` reply.
    pub fn stat(&mut self, counter: &str) -> u64 {
        let stats = self.ask("stats");
        stats[counter]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {counter:?} in {stats}"))
    }

    /// Sends `quit` and waits for the process to exit.
    pub fn quit(mut self) -> Result<(), String> {
        let reply = self.request("quit")?;
        if reply["ok"] != "quit" {
            return Err(format!("unexpected reply to quit: {reply}"));
        }
        self.stdin.take();
        let status = self.child.wait().map_err(|e| e.to_string())?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("exit status {status}"))
    }

    /// SIGKILL: the process dies without a word to its peers.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Where a node's stderr (its log) goes: beside its database.
pub fn log_path(spec: &NodeSpec) -> PathBuf {
    spec.log_dir
        .join(format!("{}.{}.log", spec.name, spec.listen.port()))
}

/// The `node` example binary built beside the running executable (`target/<profile>/examples`).
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let profile_dir = exe
        .ancestors()
        .find(|dir| dir.join("examples").is_dir() && dir.join("deps").is_dir())
        .expect("running from a cargo target directory");
    profile_dir
        .join("examples")
        .join(format!("node{}", std::env::consts::EXE_SUFFIX))
}

/// A loopback port that was free a moment ago, below Linux's ephemeral range (32768 and up)
/// so that no outgoing connection of a running node can take it before its node binds it.
/// Ports are handed out once per process, from a start that differs between processes.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 7919) % 10_000;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + offset % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub fn eventually<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
