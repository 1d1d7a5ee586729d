//! Fault-test a service built on `ractor_cache_sync` the way the crate tests itself: every
//! node a separate OS process, real TCP between them, faults injected on the wire, and an exact
//! offline check of the staleness bound.
//!
//! - [`process`]: start node processes and drive them over stdin/stdout — one command per line
//!   in, one JSON object per line out, `{"ok":"ready"}` first. [`NodeSpec`] starts the crate's
//!   `node` example by default; point [`NodeSpec::program`] at your own binary, or hand
//!   [`NodeProcess::spawn`] any command that speaks the same line protocol.
//! - [`proxy`]: a TCP proxy to put between two nodes (dial the proxy instead of the peer) that
//!   forwards ractor_cluster's frames one by one and can stall a direction (a silent
//!   partition), cut every connection, and drop or duplicate single frames.
//! - [`staleness`]: record every write (with the time its reply arrived) and every read (with
//!   the time it was sent) while faults happen, then check the bound exactly: a read sent at
//!   least one lease after a write's reply must see that write or a newer one.
//!
//! The staleness loops expect two commands of the node under test: `put KEY VALUE` answering
//! `{"version": N, ...}` and `get KEY` answering `{"version": N, "hit": bool, ...}` (absent
//! keys: no `version`). [`NodeProcess::peers`], [`NodeProcess::value`] and
//! [`NodeProcess::stat`] use `peers`, `get` and `stats` the same way. `examples/node` in the
//! crate's repository implements all of them.
//!
//! ```no_run
//! use std::time::Duration;
//! use ractor_cache_sync_testkit::{eventually, NodeProcess, NodeSpec};
//!
//! let db = std::env::temp_dir().join("kv.db");
//! let a = NodeSpec::new("a", &db);
//! let b = NodeSpec::new("b", &db).peer(&a);
//! let (mut a, mut b) = (NodeProcess::start(&a).unwrap(), NodeProcess::start(&b).unwrap());
//! a.ask("put k v1");
//! eventually(Duration::from_secs(20), || (b.value("k")? == "v1").then_some(()))
//!     .expect("b serves what a wrote");
//! ```
#![forbid(unsafe_code)]

pub mod process;
pub mod proxy;
pub mod staleness;

pub use process::{eventually, free_port, node_binary, NodeProcess, NodeSpec};
pub use proxy::{Dir, FaultProxy};
pub use staleness::{History, Verdict};
