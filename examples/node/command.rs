//! The node's stdin command language: one command per line.

/// One parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    /// A put that waits until every peer applied the invalidation (or `--confirm-timeout-ms` passes).
    PutConfirmed {
        key: String,
        value: String,
    },
    /// Invalidates `n` distinct keys as fast as possible, without writing the database: a load
    /// generator for backlog and memory tests.
    Burst(u64),
    Get {
        key: String,
    },
    /// `KEY`, once this node applied what the write `TOKEN` names.
    GetAfter {
        token: String,
        key: String,
    },
    /// `KEY` at `VERSION` or newer: from the heap if held, else from the source.
    GetAtLeast {
        key: String,
        version: u64,
    },
    /// `KEY`, from the heap only if its guarantee is at most `MS` old.
    GetWithin {
        key: String,
        max_age_ms: u64,
    },
    Peers,
    /// Every other member this node knows of, with its address and state.
    Members,
    /// Tells the node that a member is gone for good (see `Node::remove_member`).
    RemoveMember(String),
    Stats,
    /// Cast hex-encoded bytes to every remote member as if they were an envelope (fault
    /// injection), or, with `foreign`, a message of a type that is not ours.
    Inject(Injection),
    /// Kill the cache's Synchronization actor (the cache actor restarts it).
    KillSync,
    /// Kill the node-level actor (its supervisor spawns it again).
    KillLiveness,
    /// Make the clock that counts suspended time jump by this many milliseconds, as a
    /// suspension of the system would (fault injection).
    SimulateSuspend(u64),
    Quit,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Injection {
    Bytes(Vec<u8>),
    Foreign,
    /// `n` bytes of garbage in one message.
    Size(usize),
    /// An invalidation of key `block-n` on the `--slow-topic` cache: its hook on every other
    /// node blocks for `n` ms.
    Block(u64),
    /// `n` small garbage envelopes, as fast as possible.
    Flood(u64),
    /// A well-formed envelope of another topic.
    OtherTopic,
    /// A publish of this topic under another node's name: `(origin, incarnation, seq, key)`,
    /// invalidating `key`.
    Forge(String, u64, u64, String),
    /// From now on, after each heartbeat, one forged under another node's name:
    /// `(origin, incarnation)`.
    Impersonate(String, u64),
    /// The node-level heartbeats list this many made-up members from now on (0 stops it).
    Gossip(usize),
    /// A node-level clean leave forged under another node's name: `(origin, node-level
    /// incarnation)`.
    Leave(String, u64),
}

impl Command {
    /// Parses a line; the error is the message for the `{"error": ...}` reply.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim();
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match verb {
            "put" | "put-confirmed" => {
                let (key, value) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| format!("usage: {verb} KEY VALUE"))?;
                let (key, value) = (key.to_owned(), value.trim().to_owned());
                Ok(if verb == "put" {
                    Self::Put { key, value }
                } else {
                    Self::PutConfirmed { key, value }
                })
            }
            "burst" => match rest.parse::<u64>() {
                Ok(n) if (1..=10_000_000).contains(&n) => Ok(Self::Burst(n)),
                _ => Err("usage: burst N (1 to 10000000)".into()),
            },
            "get" if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(Self::Get {
                key: rest.to_owned(),
            }),
            "get" => Err("usage: get KEY".into()),
            "get-after" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let [token, key] = parts[..] else {
                    return Err("usage: get-after TOKEN KEY".into());
                };
                Ok(Self::GetAfter {
                    token: token.to_owned(),
                    key: key.to_owned(),
                })
            }
            "get-at-least" | "get-within" => {
                let usage = if verb == "get-at-least" {
                    "usage: get-at-least KEY VERSION"
                } else {
                    "usage: get-within KEY MILLISECONDS (at most a day)"
                };
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let [key, n] = parts[..] else {
                    return Err(usage.into());
                };
                let Ok(n) = n.parse::<u64>() else {
                    return Err(usage.into());
                };
                let key = key.to_owned();
                match verb {
                    "get-at-least" => Ok(Self::GetAtLeast { key, version: n }),
                    _ if n <= 86_400_000 => Ok(Self::GetWithin { key, max_age_ms: n }),
                    _ => Err(usage.into()),
                }
            }
            "peers" | "members" | "stats" | "quit" | "kill-sync" | "kill-liveness"
                if !rest.is_empty() => {
                Err(format!("{verb} takes no arguments"))
            }
            "peers" => Ok(Self::Peers),
            "members" => Ok(Self::Members),
            "remove-member" if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
                Ok(Self::RemoveMember(rest.to_owned()))
            }
            "remove-member" => Err("usage: remove-member NAME@HOST".into()),
            "kill-sync" => Ok(Self::KillSync),
            "kill-liveness" => Ok(Self::KillLiveness),
            "simulate-suspend" => match rest.parse::<u64>() {
                Ok(ms) if ms <= 86_400_000 => Ok(Self::SimulateSuspend(ms)),
                _ => Err("usage: simulate-suspend MILLISECONDS (at most a day)".into()),
            },
            "stats" => Ok(Self::Stats),
            "quit" => Ok(Self::Quit),
            "inject" if rest == "foreign" => Ok(Self::Inject(Injection::Foreign)),
            "inject" if rest == "other-topic" => Ok(Self::Inject(Injection::OtherTopic)),
            "inject" if rest.starts_with("gossip ") => match rest["gossip ".len()..].trim().parse::<usize>() {
                Ok(n) if n <= 1_000_000 => Ok(Self::Inject(Injection::Gossip(n))),
                _ => Err("usage: inject gossip COUNT (<= 1 000 000; 0 stops it)".into()),
            },
            "inject" if ["size ", "flood ", "block "].iter().any(|p| rest.starts_with(p)) => {
                let (what, n) = rest.split_once(' ').unwrap_or_default();
                match (what, n.trim().parse::<u64>()) {
                    ("size", Ok(n)) if n <= 64 << 20 => Ok(Self::Inject(Injection::Size(n as usize))),
                    ("flood", Ok(n)) if n <= 10_000_000 => Ok(Self::Inject(Injection::Flood(n))),
                    ("block", Ok(n)) if n <= 60_000 => Ok(Self::Inject(Injection::Block(n))),
                    _ => Err("usage: inject size BYTES (<= 64 MiB) | inject flood COUNT | inject block MS (<= 60 000)".into()),
                }
            }
            "inject" if rest.starts_with("forge ") => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                match parts[..] {
                    [_, origin, incarnation, seq, key] => match (incarnation.parse(), seq.parse()) {
                        (Ok(incarnation), Ok(seq)) => Ok(Self::Inject(Injection::Forge(
                            origin.to_owned(),
                            incarnation,
                            seq,
                            key.to_owned(),
                        ))),
                        _ => Err("usage: inject forge ORIGIN INCARNATION SEQ KEY".into()),
                    },
                    _ => Err("usage: inject forge ORIGIN INCARNATION SEQ KEY".into()),
                }
            }
            "inject" if rest.starts_with("impersonate ") => {
                origin_and_incarnation(rest, "usage: inject impersonate ORIGIN INCARNATION")
                    .map(|(origin, inc)| Self::Inject(Injection::Impersonate(origin, inc)))
            }
            "inject" if rest.starts_with("leave ") => {
                origin_and_incarnation(rest, "usage: inject leave ORIGIN NODE_INCARNATION")
                    .map(|(origin, inc)| Self::Inject(Injection::Leave(origin, inc)))
            }
            "inject" => decode_hex(rest).map(|b| Self::Inject(Injection::Bytes(b))),
            "" => Err("empty command".into()),
            other => Err(format!(
                "unknown command {other:?} (expected put, put-confirmed, get, get-after, get-at-least, get-within, peers, members, remove-member, stats, burst, inject, kill-sync or quit)"
            )),
        }
    }
}

/// `WORD ORIGIN INCARNATION`: the origin and the incarnation, or `usage`.
fn origin_and_incarnation(rest: &str, usage: &str) -> Result<(String, u64), String> {
    match rest.split_whitespace().collect::<Vec<_>>()[..] {
        [_, origin, incarnation] => incarnation
            .parse()
            .map(|inc| (origin.to_owned(), inc))
            .map_err(|_| usage.to_owned()),
        _ => Err(usage.to_owned()),
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    let usage =
        || "usage: inject HEXBYTES | foreign | other-topic | size BYTES | flood COUNT".to_owned();
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(usage());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| usage()))
        .collect()
}
