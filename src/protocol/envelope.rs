//! The versioned wire envelope every Synchronization actor sends and receives.
//!
//! Layout: `b"RCS"`, one envelope-version byte, then the postcard encoding of [`Envelope`].
//! The version byte comes first so that a node can tell "a version I do not know" (a rolling
//! upgrade) from "garbage" without trying to decode the rest.

use serde::{Deserialize, Serialize};

/// The envelope version this build writes and reads.
pub(crate) const ENVELOPE_VERSION: u8 = 2;

/// Envelopes larger than this are refused before decoding (and never sent).
pub(crate) const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;

const MAGIC: &[u8; 3] = b"RCS";

/// One message from one node's Synchronization actor to another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// Topic name; a receiver drops envelopes for a topic it does not serve.
    pub(crate) topic: String,
    /// Name of the node that sent it (`name@host`).
    pub(crate) origin: String,
    /// Random per start of the sending Synchronization actor.
    pub(crate) incarnation: u64,
    /// What the envelope carries.
    pub(crate) body: Body,
}

/// The envelope's content. New variants may only be added at the end (postcard encodes the
/// variant index); an older node counts an unknown variant as undecodable and repairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// One published message, encoded with postcard, with its per (origin, incarnation, topic)
    /// sequence number, starting at 1.
    Publish { seq: u64, payload: Vec<u8> },
    /// Sent every heartbeat interval to every remote member of the topic.
    Heartbeat {
        /// The sender's monotonic clock (µs) when it sent this.
        stamp: u64,
        /// The last sequence number the sender published on this topic (0 if none).
        last_seq: u64,
        /// One entry per peer the sender knows.
        echoes: Vec<Echo>,
        /// The cluster's members as the sender knows them: filled on the node-level
        /// heartbeat; on a topic's sent on its own, the members the sender has a session
        /// with; empty on a topic's carried inside the node-level heartbeat.
        members: Vec<Member>,
        /// On the node-level heartbeat: each topic's latest heartbeat, as (topic, envelope
        /// bytes), for the receiver to hand to its actor of that topic. Empty on a topic's.
        bundled: Vec<(String, Vec<u8>)>,
    },
    /// The sender is leaving the topic cleanly after publishing up to `last_seq`.
    Leave { last_seq: u64 },
}

/// What a heartbeat's sender knows of one of its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Echo {
    /// The peer's name.
    pub(crate) peer: String,
    /// The peer's incarnation these figures are about.
    pub(crate) incarnation: u64,
    /// The peer's last heartbeat stamp received (its clock; 0 if none yet).
    pub(crate) stamp: u64,
    /// The highest of the peer's sequence numbers applied (or covered by a repair).
    pub(crate) applied: u64,
}

/// One cluster member, as a node-level heartbeat's sender knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// The member's name (`name@host`).
    pub(crate) name: String,
    /// The member's node-level incarnation (random per start).
    pub(crate) incarnation: u64,
    /// The address to dial it on (`host:port`, as it advertises itself).
    pub(crate) addr: String,
    /// Whether the sender has a ready session with it now.
    pub(crate) ready: bool,
}

/// Why bytes from the network are not a usable envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("envelope of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("not an envelope (bad magic)")]
    BadMagic,
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

impl Envelope {
    /// Encodes the envelope (the actors encode from its parts, [`encode`]; tests and the
    /// fault-injection hooks from a whole envelope).
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn encode(&self) -> Result<Vec<u8>, crate::error::Error> {
        encode(&self.topic, &self.origin, self.incarnation, &self.body)
    }

    /// Decodes untrusted bytes; never panics.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let rest = bytes.strip_prefix(MAGIC).ok_or(DecodeError::BadMagic)?;
        let (&version, rest) = rest.split_first().ok_or(DecodeError::BadMagic)?;
        if version != ENVELOPE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        match postcard::take_from_bytes::<Self>(rest) {
            Ok((envelope, [])) => Ok(envelope),
            Ok((_, trailing)) => Err(DecodeError::Malformed(format!(
                "{} trailing bytes",
                trailing.len()
            ))),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        }
    }
}

/// The envelope's fields by reference: serialised exactly as [`Envelope`] (serde writes a
/// `&str` as it writes a `String`), without copying the topic and origin for every send.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    topic: &'a str,
    origin: &'a str,
    incarnation: u64,
    body: &'a Body,
}

/// Whether a publish of `payload_len` bytes from `origin` on `topic` fits in an envelope
/// (counting the header's largest encoding: magic, version, lengths, incarnation, sequence).
pub(crate) fn publish_fits(topic: &str, origin: &str, payload_len: usize) -> bool {
    const HEADER_MAX: usize = 3 + 1 + 3 * 5 + 10 + 1 + 10;
    topic.len() + origin.len() + payload_len + HEADER_MAX <= MAX_ENVELOPE_BYTES
}

/// The error for `bytes` that do not fit in one envelope.
pub(crate) fn too_large(bytes: usize) -> crate::error::Error {
    let reason = format!("{bytes} bytes exceed the {MAX_ENVELOPE_BYTES}-byte envelope limit");
    crate::error::Error::Encode(std::sync::Arc::from(crate::error::BoxError::from(reason)))
}

/// Encodes an envelope from its parts; what [`Envelope::encode`] and every send use.
pub(crate) fn encode(
    topic: &str,
    origin: &str,
    incarnation: u64,
    body: &Body,
) -> Result<Vec<u8>, crate::error::Error> {
    let body_len = match body {
        Body::Publish { payload, .. } => payload.len(),
        Body::Heartbeat {
            echoes,
            members,
            bundled,
            ..
        } => {
            let bundled: usize = bundled.iter().map(|(t, e)| t.len() + e.len() + 8).sum();
            echoes.len() * 48 + members.len() * 64 + bundled
        }
        Body::Leave { .. } => 0,
    };
    let mut out = Vec::with_capacity(64 + body_len);
    out.extend_from_slice(MAGIC);
    out.push(ENVELOPE_VERSION);
    let envelope = EnvelopeRef {
        topic,
        origin,
        incarnation,
        body,
    };
    let out = postcard::to_extend(&envelope, out).map_err(crate::error::Error::encode)?;
    if out.len() > MAX_ENVELOPE_BYTES {
        return Err(too_large(out.len()));
    }
    Ok(out)
}

/// One owned buffer per peer, as ractor_cluster takes ownership of what it sends: copies of the
/// one encoding for all peers but the last, which gets the encoding itself.
pub(crate) fn per_peer(bytes: Vec<u8>, peers: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut encoding = Some(bytes);
    (0..peers).map(move |peer| {
        let last = peer + 1 == peers;
        let buffer = if last {
            encoding.take()
        } else {
            encoding.clone()
        };
        buffer.unwrap_or_default()
    })
}

/// Encoding and decoding as the Synchronization actor does them, for the benchmarks.
#[cfg(feature = "fault-injection")]
pub(crate) mod bench {
    use super::{Body, Envelope};

    /// Encodes a publish envelope of `payload` once and hands out one buffer per peer, as a
    /// publish to `peers` remote members does.
    pub fn encode_for_peers(payload: &[u8], peers: usize) -> Vec<Vec<u8>> {
        let envelope = Envelope {
            topic: "bench".into(),
            origin: "a@127.0.0.1".into(),
            incarnation: 7,
            body: Body::Publish {
                seq: 1,
                payload: payload.to_vec(),
            },
        };
        let bytes = envelope.encode().expect("encodes");
        super::per_peer(bytes, peers).collect()
    }

    /// A publish envelope with every field chosen by the caller: what a peer holding the
    /// cluster's credentials could forge (another node's name, incarnation and sequence).
    pub fn encode_publish(
        topic: &str,
        origin: &str,
        incarnation: u64,
        seq: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        let body = Body::Publish {
            seq,
            payload: payload.to_vec(),
        };
        super::encode(topic, origin, incarnation, &body).expect("encodes")
    }

    /// Decodes an envelope; true if it decoded.
    pub fn decode(bytes: &[u8]) -> bool {
        Envelope::decode(bytes).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_peer_gets_the_bytes_and_the_last_gets_the_encoding_itself() {
        let bytes = vec![1u8, 2, 3];
        let original = bytes.as_ptr();
        let buffers: Vec<Vec<u8>> = per_peer(bytes, 3).collect();
        assert_eq!(buffers, vec![vec![1, 2, 3]; 3]);
        assert_eq!(
            buffers[2].as_ptr(),
            original,
            "the last peer's buffer is not a copy"
        );
        assert_eq!(per_peer(vec![1], 0).count(), 0);
    }

    fn sample(payload: Vec<u8>) -> Envelope {
        Envelope {
            topic: "users".into(),
            origin: "a@127.0.0.1".into(),
            incarnation: 0xdead_beef,
            body: Body::Publish { seq: 42, payload },
        }
    }

    #[test]
    fn round_trips() {
        let envelope = sample(vec![1, 2, 3]);
        let bytes = envelope.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
    }

    #[test]
    fn heartbeats_and_leaves_round_trip() {
        for body in [
            Body::Heartbeat {
                stamp: 9,
                last_seq: 3,
                echoes: vec![Echo {
                    peer: "b@h".into(),
                    incarnation: 1,
                    stamp: 2,
                    applied: 3,
                }],
                members: vec![Member {
                    name: "c@h".into(),
                    incarnation: 5,
                    addr: "h:4003".into(),
                    ready: true,
                }],
                bundled: vec![("users".into(), vec![1, 2, 3])],
            },
            Body::Leave { last_seq: 4 },
        ] {
            let envelope = Envelope {
                body,
                ..sample(vec![])
            };
            assert_eq!(
                Envelope::decode(&envelope.encode().unwrap()).unwrap(),
                envelope
            );
        }
    }

    #[test]
    fn rejects_unknown_version_before_decoding() {
        let mut bytes = sample(vec![]).encode().unwrap();
        bytes[3] = ENVELOPE_VERSION + 1;
        assert_eq!(
            Envelope::decode(&bytes),
            Err(DecodeError::UnknownVersion(ENVELOPE_VERSION + 1))
        );
    }

    #[test]
    fn rejects_bad_magic_trailing_bytes_and_truncation() {
        assert_eq!(Envelope::decode(b"XYZ\x01"), Err(DecodeError::BadMagic));
        assert_eq!(Envelope::decode(b"RCS"), Err(DecodeError::BadMagic));
        let mut bytes = sample(vec![9; 10]).encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        bytes.truncate(bytes.len() - 5);
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_oversize_in_both_directions() {
        let big = sample(vec![0; MAX_ENVELOPE_BYTES]);
        assert!(matches!(big.encode(), Err(crate::error::Error::Encode(_))));
        let bytes = vec![0u8; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(
            Envelope::decode(&bytes),
            Err(DecodeError::TooLarge(MAX_ENVELOPE_BYTES + 1))
        );
    }

    fn echoes() -> impl Strategy<Value = Vec<Echo>> {
        let echo = (".{0,24}", any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(peer, incarnation, stamp, applied)| Echo {
                peer,
                incarnation,
                stamp,
                applied,
            },
        );
        proptest::collection::vec(echo, 0..6)
    }

    fn members() -> impl Strategy<Value = Vec<Member>> {
        let member = (".{0,24}", any::<u64>(), ".{0,24}", any::<bool>()).prop_map(
            |(name, incarnation, addr, ready)| Member {
                name,
                incarnation,
                addr,
                ready,
            },
        );
        proptest::collection::vec(member, 0..6)
    }

    /// A topic heartbeat, encoded, as a node-level heartbeat bundles it.
    fn bundled() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        let topic_beat = (
            ".{0,16}",
            ".{0,16}",
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            echoes(),
        )
            .prop_map(|(topic, origin, incarnation, stamp, last_seq, echoes)| {
                let body = Body::Heartbeat {
                    stamp,
                    last_seq,
                    echoes,
                    members: vec![],
                    bundled: vec![],
                };
                let bytes = encode(&topic, &origin, incarnation, &body).unwrap();
                (topic, bytes)
            });
        proptest::collection::vec(topic_beat, 0..4)
    }

    fn bodies() -> impl Strategy<Value = Body> {
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..128))
                .prop_map(|(seq, payload)| Body::Publish { seq, payload }),
            (any::<u64>(), any::<u64>(), echoes(), members(), bundled()).prop_map(
                |(stamp, last_seq, echoes, members, bundled)| Body::Heartbeat {
                    stamp,
                    last_seq,
                    echoes,
                    members,
                    bundled,
                }
            ),
            any::<u64>().prop_map(|last_seq| Body::Leave { last_seq }),
        ]
    }

    fn envelopes() -> impl Strategy<Value = Envelope> {
        (".{0,20}", ".{0,20}", any::<u64>(), bodies()).prop_map(
            |(topic, origin, incarnation, body)| Envelope {
                topic,
                origin,
                incarnation,
                body,
            },
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn arbitrary_suffix_after_valid_header_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.push(ENVELOPE_VERSION);
            bytes.extend(tail);
            // The header is the current one: the body decoder is what runs.
            let decoded = Envelope::decode(&bytes);
            prop_assert!(!matches!(decoded, Err(DecodeError::BadMagic | DecodeError::UnknownVersion(_))));
        }

        #[test]
        fn every_body_round_trips(envelope in envelopes()) {
            let bytes = envelope.encode().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        }

        /// A valid envelope of any body, then damaged as a network or a hostile peer could:
        /// bytes changed, cut short, or added. Decoding never panics, and a heartbeat that
        /// still decodes hands on bundled bytes that decode (or fail) without panicking too.
        #[test]
        fn damaged_envelopes_of_every_body_never_panic(
            envelope in envelopes(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut bytes = envelope.encode().unwrap();
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend(extra);
            if let Ok(Envelope { body: Body::Heartbeat { bundled, .. }, .. }) = Envelope::decode(&bytes) {
                for (_, inner) in bundled {
                    let _ = Envelope::decode(&inner);
                }
            }
        }

        #[test]
        fn any_envelope_round_trips(
            topic in ".{0,20}", origin in ".{0,20}", incarnation: u64, seq: u64,
            payload in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let envelope = Envelope { topic, origin, incarnation, body: Body::Publish { seq, payload } };
            prop_assert_eq!(Envelope::decode(&envelope.encode().unwrap()).unwrap(), envelope);
        }
    }

    /// Envelopes of every body as this wire version (2) encodes them, byte for byte: a node of
    /// a later build must still read what nodes of this one send (see "Rolling upgrades" in
    /// `docs/operations.md`). A change that breaks one of these is a new wire version.
    const WIRE_V2: [&str; 3] = [
        "5243530216726163746f725f63616368655f73796e632e6e6f6465046140683107002a03010203",
        "5243530216726163746f725f63616368655f73796e632e6e6f646504614068310701c0c4072901046240683209890628010462406832090d31302e302e302e323a3430303101010575736572731e524353020575736572730461406831070105030104624068320904020000",
        "5243530216726163746f725f63616368655f73796e632e6e6f6465046140683107022a",
    ];

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn what_nodes_of_wire_version_2_send_still_decodes_and_encodes_the_same() {
        let echo = |peer: &str, incarnation, stamp, applied| Echo {
            peer: peer.into(),
            incarnation,
            stamp,
            applied,
        };
        let topic_beat = Envelope {
            topic: "users".into(),
            origin: "a@h1".into(),
            incarnation: 7,
            body: Body::Heartbeat {
                stamp: 5,
                last_seq: 3,
                echoes: vec![echo("b@h2", 9, 4, 2)],
                members: vec![],
                bundled: vec![],
            },
        };
        let bodies = [
            Body::Publish {
                seq: 42,
                payload: vec![1, 2, 3],
            },
            Body::Heartbeat {
                stamp: 123_456,
                last_seq: 41,
                echoes: vec![echo("b@h2", 9, 777, 40)],
                members: vec![Member {
                    name: "b@h2".into(),
                    incarnation: 9,
                    addr: "10.0.0.2:4001".into(),
                    ready: true,
                }],
                bundled: vec![("users".into(), topic_beat.encode().unwrap())],
            },
            Body::Leave { last_seq: 42 },
        ];
        assert_eq!(
            ENVELOPE_VERSION, 2,
            "a new wire version: keep these, add its own"
        );
        for (hex, body) in WIRE_V2.iter().zip(bodies) {
            let envelope = Envelope {
                topic: "ractor_cache_sync.node".into(),
                origin: "a@h1".into(),
                incarnation: 7,
                body,
            };
            let bytes = unhex(hex);
            assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
            assert_eq!(envelope.encode().unwrap(), bytes);
            if let Body::Heartbeat { bundled, .. } = &envelope.body {
                assert_eq!(Envelope::decode(&bundled[0].1).unwrap(), topic_beat);
            }
        }
    }
}
