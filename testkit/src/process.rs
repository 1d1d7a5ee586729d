//! Node processes driven over stdin/stdout: one command per line in, one JSON object per
//! line out, the first being `{"ok":"ready"}` once the node has started.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one command may take before the driver gives up on the node, unless
/// [`NodeProcess::reply_timeout`] says otherwise.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start one node of the crate's `node` example (or of any binary that takes the same
/// flags: `--name`, `--listen`, `--db`, `--peer`, the cookie in `RACTOR_CACHE_SYNC_COOKIE`).
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The node's name (without `@host`).
    pub name: String,
    /// The binary to run; [`node_binary`] unless changed with [`program`](Self::program).
    pub program: PathBuf,
    /// The cluster address it listens on.
    pub listen: SocketAddr,
    /// The peers it dials.
    pub peers: Vec<SocketAddr>,
    /// A SQLite file, or a `postgres://` URL.
    pub db: PathBuf,
    /// Where the node's stderr goes (`NAME.PORT.log`).
    pub log_dir: PathBuf,
    /// The cluster cookie.
    pub cookie: String,
    /// More command-line arguments, passed as they are.
    pub extra: Vec<String>,
}

impl NodeSpec {
    /// A node on a free loopback port sharing `db`.
    pub fn new(name: &str, db: &Path) -> Self {
        Self {
            name: name.to_owned(),
            program: node_binary(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            peers: Vec::new(),
            db: db.to_owned(),
            log_dir: db.parent().map_or_else(std::env::temp_dir, Path::to_owned),
            cookie: "test-cookie-0123456789abcdef".to_owned(),
            extra: Vec::new(),
        }
    }

    /// Dials `other`.
    pub fn peer(mut self, other: &NodeSpec) -> Self {
        self.peers.push(other.listen);
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// Runs `program` instead of the `node` example (your own service, say).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// The command that starts this node under `wrapper` (a program and its arguments, such
    /// as `["ip", "netns", "exec", "host1"]`), which runs the node's own command line after
    /// them: to start a node in a namespace, a container or a sandbox.
    pub fn command_under<S: AsRef<std::ffi::OsStr>>(
        &self,
        wrapper: impl IntoIterator<Item = S>,
    ) -> Result<Command, String> {
        let node = self.command()?;
        let mut wrapper = wrapper.into_iter();
        let program = wrapper.next().ok_or("an empty wrapper")?;
        let mut command = Command::new(program);
        command
            .args(wrapper)
            .arg(node.get_program())
            .args(node.get_args())
            .envs(node.get_envs().filter_map(|(k, v)| Some((k, v?))));
        let log = std::fs::File::create(log_path(self)).map_err(|e| e.to_string())?;
        command.stderr(log);
        Ok(command)
    }

    /// The command that starts this node, its stderr going to [`log_path`].
    pub fn command(&self) -> Result<Command, String> {
        let log = std::fs::File::create(log_path(self)).map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.program);
        command
            .args(["--name", &self.name, "--listen", &self.listen.to_string()])
            .arg("--db")
            .arg(&self.db)
            .args(
                self.peers
                    .iter()
                    .flat_map(|p| ["--peer".to_owned(), p.to_string()]),
            )
            .args(&self.extra)
            .env("RACTOR_CACHE_SYNC_COOKIE", &self.cookie)
            .stderr(log);
        Ok(command)
    }
}

/// A running node process. Killed when dropped.
pub struct NodeProcess {
    /// How it was started.
    pub spec: NodeSpec,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    reply_timeout: Duration,
}

impl NodeProcess {
    /// Starts the node and waits for its `ready` line.
    pub fn start(spec: &NodeSpec) -> Result<Self, String> {
        Self::spawn(spec.clone(), spec.command()?)
    }

    /// Runs `command` (stdin and stdout are piped here) as the node described by `spec` and
    /// waits for its `ready` line: for binaries with a command line of their own.
    pub fn spawn(spec: NodeSpec, mut command: Command) -> Result<Self, String> {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let program = command.get_program().to_owned();
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", Path::new(&program).display()))?;
        let stdin = child.stdin.take();
        let lines = read_lines(child.stdout.take().expect("stdout is piped"));
        let mut node = Self {
            spec,
            child,
            stdin,
            lines,
            reply_timeout: REPLY_TIMEOUT,
        };
        let ready = node.next_reply()?;
        if ready["ok"] != "ready" {
            return Err(format!("{} did not start: {ready}", node.spec.name));
        }
        Ok(node)
    }

    /// How long each later reply may take (default [`REPLY_TIMEOUT`]).
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Sends one command line and returns its one-line JSON reply.
    pub fn request(&mut self, line: &str) -> Result<Value, String> {
        self.send_raw(format!("{line}\n").as_bytes())?;
        self.next_reply()
    }

    /// Like [`request`](Self::request), panicking with the node's name on failure (for tests).
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

    /// Waits for the next reply line (after [`send_raw`](Self::send_raw)).
    pub fn next_reply(&mut self) -> Result<Value, String> {
        let line = match self.lines.recv_timeout(self.reply_timeout) {
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

/// The crate's `node` example, built beside the running executable.
pub fn node_binary() -> PathBuf {
    example_binary("node")
}

/// The example `name` built beside the running executable (`target/<profile>/examples`): what
/// `cargo test` builds for the integration tests of the package that has the example.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let profile_dir = exe
        .ancestors()
        .find(|dir| dir.join("examples").is_dir() && dir.join("deps").is_dir())
        .expect("running from a cargo target directory");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A loopback port that was free a moment ago, below Linux's ephemeral range (32768 and up)
/// so that no outgoing connection of a running node can take it before its node binds it.
/// Ports are handed out once per process, from a start that differs between processes.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // 20 000 to 32 767: every port stays below the ephemeral range, where an outgoing
    // connection could take it between this check and the node's bind.
    const SPAN: u32 = 12_768;
    let base = (std::process::id() * 7919) % SPAN;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (base + offset) % SPAN) as u16;
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
