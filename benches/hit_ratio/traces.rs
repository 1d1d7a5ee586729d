//! The ARC paper's disk traces (Megiddo and Modha, "ARC: A Self-Tuning, Low Overhead
//! Replacement Cache", FAST 2003), as published in `github.com/moka-rs/cache-trace`, `arc/`.
//!
//! Each line of a trace is `starting_block number_of_blocks [ignored request_number]`: one
//! read of each block in the range. OLTP, P3 and P6 are in `benches/traces/` (only the first
//! two fields, recompressed: 2.8 MB in all); the larger ones are fetched into
//! `target/traces/` the first time the bench runs where GitHub is reachable, and skipped (with
//! a note) where it is not.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Command;

/// A trace and the capacities its rows are measured at (the ARC paper's: 512-byte pages, so
/// 32 768 pages is a 16 MiB cache).
pub struct Real {
    pub name: &'static str,
    pub capacities: &'static [u64],
    /// Kept in the repository (else fetched).
    pub kept: bool,
    /// Points behind the best of quick_cache and moka that this crate's policy is known to
    /// be on this trace beyond the one point every row is allowed (S3-FIFO loses to TinyLFU
    /// where frequency over long reuse distances matters): `--check` fails only if it falls
    /// further behind.
    pub known_gap: f64,
}

pub const REAL: [Real; 5] = [
    Real {
        name: "OLTP",
        known_gap: 0.0,
        capacities: &[1_000, 2_000, 5_000, 10_000, 15_000],
        kept: true,
    },
    Real {
        name: "P3",
        known_gap: 0.5,
        capacities: &[32_768],
        kept: true,
    },
    Real {
        name: "P6",
        known_gap: 2.5,
        capacities: &[32_768],
        kept: true,
    },
    Real {
        name: "P2",
        known_gap: 0.0,
        capacities: &[32_768],
        kept: false,
    },
    Real {
        name: "P12",
        known_gap: 0.0,
        capacities: &[32_768],
        kept: false,
    },
];

const SOURCE: &str = "https://raw.githubusercontent.com/moka-rs/cache-trace/main/arc";

/// The trace's block reads, or why it is not at hand.
pub fn load(trace: &Real, fetch: bool) -> Result<Vec<u64>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = if trace.kept {
        root.join("benches/traces")
            .join(format!("{}.blocks.zst", trace.name))
    } else {
        let path = root
            .join("target/traces")
            .join(format!("{}.lis.zst", trace.name));
        if !path.exists() {
            if !fetch {
                return Err(
                    "not fetched (run without --no-fetch where GitHub is reachable)".into(),
                );
            }
            download(trace.name, &path)?;
        }
        path
    };
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let decoder = ruzstd::decoding::StreamingDecoder::new(BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    parse(decoder).map_err(|e| format!("{}: {e}", path.display()))
}

/// Fetches a trace with `curl` into `path` (written whole or not at all).
fn download(name: &str, path: &Path) -> Result<(), String> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let partial = path.with_extension("partial");
    let url = format!("{SOURCE}/{name}.lis.zst");
    eprintln!("fetching {url}");
    let status = Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location"])
        .args(["--connect-timeout", "10", "--max-time", "300", "--output"])
        .arg(&partial)
        .arg(&url)
        .status()
        .map_err(|e| format!("not fetched: curl: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("not fetched: {url} unreachable"));
    }
    std::fs::rename(&partial, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// One read per block of every line; a line that does not parse is an error, not a guess.
fn parse(input: impl Read) -> Result<Vec<u64>, String> {
    let mut keys = Vec::new();
    for (number, line) in BufReader::new(input).lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let mut fields = line.split_ascii_whitespace();
        let (Some(start), Some(count)) = (fields.next(), fields.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {}: {line:?}", number + 1));
        };
        let bad = || format!("line {}: {line:?}", number + 1);
        let start: u64 = start.parse().map_err(|_| bad())?;
        let count: u64 = count.parse().map_err(|_| bad())?;
        keys.extend(start..start.saturating_add(count));
    }
    Ok(keys)
}
