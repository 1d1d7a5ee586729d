//! The protocol, as plain data with explicit time: the wire envelope, what one arriving
//! sequence number means, what this node knows of each peer (incarnation, applied sequence,
//! lease) and the backlog of unacknowledged bytes. Nothing here sends, spawns or reads a
//! clock: callers pass `now` (microseconds of this node's monotonic clock), so unit and model
//! tests drive it over a simulated network without sockets or a runtime.

pub(crate) mod arrival;
pub(crate) mod backlog;
pub(crate) mod envelope;
pub(crate) mod peer_table;
pub(crate) mod progress;
