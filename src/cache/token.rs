//! Write tokens: what a write published, for a read on another node to wait for.

use std::fmt;
use std::str::FromStr;

/// What one or more writes published on a cache's topic: for each origin node, its topic
/// actor's incarnation and the sequence number under which the last of its writes went out.
/// [`Cache::get_after`](crate::Cache::get_after) on any node serves from the heap once that
/// node has applied what the token names (about one network hop after the write), or once a
/// repair covered it.
///
/// Opaque and small; it travels as text (`Display` / `FromStr`: letters, digits, `.` and `-`,
/// no spaces), for instance in an HTTP header or a cookie. Tokens of several writes combine
/// ([`combine`](Self::combine)) into a session's token. A forged or garbled token can make a
/// read wait or fail, never answer wrong.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteToken {
    pub(crate) topic: String,
    /// (origin node, topic incarnation, sequence number), one per origin.
    pub(crate) writes: Vec<(String, u64, u64)>,
}

/// Why text is not a write token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a write token: {0}")]
pub struct BadToken(&'static str);

/// Most origins one token names: a session that wrote through more nodes keeps the latest.
const MAX_ORIGINS: usize = 64;
/// Longest text accepted.
const MAX_TEXT: usize = 16 * 1024;

impl WriteToken {
    pub(crate) fn new(topic: &str, origin: &str, incarnation: u64, seq: u64) -> Self {
        Self {
            topic: topic.to_owned(),
            writes: vec![(origin.to_owned(), incarnation, seq)],
        }
    }

    /// The topic the writes went out on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Adds what `other` names (a later write of the same session): per origin and
    /// incarnation, the higher sequence number. A token of another topic is not merged
    /// (`false`).
    pub fn combine(&mut self, other: &WriteToken) -> bool {
        if other.topic != self.topic {
            return false;
        }
        for (origin, incarnation, seq) in &other.writes {
            match self
                .writes
                .iter_mut()
                .find(|(o, i, _)| o == origin && i == incarnation)
            {
                Some(mine) => mine.2 = mine.2.max(*seq),
                None => {
                    self.writes.retain(|(o, _, _)| o != origin); // a restart: the new one
                    self.writes.push((origin.clone(), *incarnation, *seq));
                }
            }
        }
        if self.writes.len() > MAX_ORIGINS {
            let excess = self.writes.len() - MAX_ORIGINS;
            self.writes.drain(..excess);
        }
        true
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<String, BadToken> {
    if text.len() % 2 != 0 {
        return Err(BadToken("odd hex"));
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(BadToken("bad hex"))?;
    String::from_utf8(bytes).map_err(|_| BadToken("not UTF-8"))
}

/// `wt1.TOPIC(-ORIGIN.INCARNATION.SEQ)*`, names in hex.
impl fmt::Display for WriteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wt1.{}", hex(&self.topic))?;
        for (origin, incarnation, seq) in &self.writes {
            write!(f, "-{}.{incarnation:x}.{seq:x}", hex(origin))?;
        }
        Ok(())
    }
}

impl FromStr for WriteToken {
    type Err = BadToken;

    fn from_str(text: &str) -> Result<Self, BadToken> {
        if text.len() > MAX_TEXT {
            return Err(BadToken("too long"));
        }
        let mut parts = text.split('-');
        let head = parts.next().unwrap_or_default();
        let topic = head
            .strip_prefix("wt1.")
            .ok_or(BadToken("unknown format"))?;
        let topic = unhex(topic)?;
        let mut writes = Vec::new();
        for part in parts {
            let fields: Vec<&str> = part.split('.').collect();
            let [origin, incarnation, seq] = fields[..] else {
                return Err(BadToken("a write is ORIGIN.INCARNATION.SEQ"));
            };
            let number = |n: &str| u64::from_str_radix(n, 16).map_err(|_| BadToken("bad number"));
            writes.push((unhex(origin)?, number(incarnation)?, number(seq)?));
        }
        if writes.is_empty() || writes.len() > MAX_ORIGINS {
            return Err(BadToken("no writes, or too many"));
        }
        Ok(Self { topic, writes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_combine_per_origin_and_refuse_another_topic() {
        let mut session = WriteToken::new("users", "a@h", 7, 3);
        assert!(session.combine(&WriteToken::new("users", "a@h", 7, 5)));
        assert!(session.combine(&WriteToken::new("users", "b@h", 9, 1)));
        assert!(session.combine(&WriteToken::new("users", "a@h", 7, 4)));
        assert_eq!(
            session.writes,
            [("a@h".to_owned(), 7, 5), ("b@h".to_owned(), 9, 1)]
        );
        // a restarted: its new incarnation replaces the old.
        assert!(session.combine(&WriteToken::new("users", "a@h", 8, 1)));
        assert_eq!(
            session.writes,
            [("b@h".to_owned(), 9, 1), ("a@h".to_owned(), 8, 1)]
        );
        assert!(!session.combine(&WriteToken::new("orders", "a@h", 8, 9)));
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "",
            "wt1",
            "wt2.75",
            "wt1.7",
            "wt1.75-",
            "wt1.75-61.1",
            "wt1.75-zz.1.1",
        ] {
            assert!(text.parse::<WriteToken>().is_err(), "{text:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn tokens_round_trip_as_text_without_spaces(
            topic in ".{0,20}",
            writes in proptest::collection::vec((".{0,30}", any::<u64>(), any::<u64>()), 1..5),
        ) {
            let token = WriteToken { topic, writes };
            let text = token.to_string();
            prop_assert!(!text.contains(char::is_whitespace));
            prop_assert_eq!(text.parse::<WriteToken>().unwrap(), token);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = text.parse::<WriteToken>();
        }
    }
}
