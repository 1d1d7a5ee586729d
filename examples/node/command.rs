//! The node's stdin command language: one command per line.

/// One parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Peers,
    Stats,
    /// Cast hex-encoded bytes to every remote member as if they were an envelope (fault
    /// injection), or, with `foreign`, a message of a type that is not ours.
    Inject(Injection),
    Quit,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Injection {
    Bytes(Vec<u8>),
    Foreign,
}

impl Command {
    /// Parses a line; the error is the message for the `{"error": ...}` reply.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim();
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match verb {
            "put" => {
                let (key, value) = rest
                    .split_once(char::is_whitespace)
                    .ok_or("usage: put KEY VALUE")?;
                Ok(Self::Put {
                    key: key.to_owned(),
                    value: value.trim().to_owned(),
                })
            }
            "get" if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(Self::Get {
                key: rest.to_owned(),
            }),
            "get" => Err("usage: get KEY".into()),
            "peers" | "stats" | "quit" if !rest.is_empty() => {
                Err(format!("{verb} takes no arguments"))
            }
            "peers" => Ok(Self::Peers),
            "stats" => Ok(Self::Stats),
            "quit" => Ok(Self::Quit),
            "inject" if rest == "foreign" => Ok(Self::Inject(Injection::Foreign)),
            "inject" => decode_hex(rest).map(|b| Self::Inject(Injection::Bytes(b))),
            "" => Err("empty command".into()),
            other => Err(format!(
                "unknown command {other:?} (expected put, get, peers, stats, inject or quit)"
            )),
        }
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    let usage = || "usage: inject HEXBYTES | inject foreign".to_owned();
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(usage());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| usage()))
        .collect()
}
