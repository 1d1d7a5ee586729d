//! `--scale`: what a cluster costs at rest and how fast it takes a newcomer in. `n` nodes,
//! each with `topics` cache topics: `n - 1` meshed by configuration, then one more started
//! with a single seed; the time until every node has a ready session with every other, then
//! each node's idle CPU over a few seconds.

use std::time::{Duration, Instant};

use ractor_cache_sync_testkit::NodeSpec;

use crate::{spawn_with, Proc};

/// One cluster size's figures.
pub struct Scale {
    pub nodes: usize,
    pub topics: usize,
    /// Milliseconds from the newcomer's start until the mesh is complete.
    pub seed_join_ms: f64,
    /// Idle CPU per node in % of one core: median, and the busiest node.
    pub idle_cpu_pct_median: f64,
    pub idle_cpu_pct_max: f64,
}

pub fn measure(nodes: usize, topics: usize) -> Scale {
    measure_with(nodes, topics, &[])
}

/// Like [`measure`], each node given `extra` environment too (a change feed, relaxed rates).
pub fn measure_with(nodes: usize, topics: usize, extra: &[(&str, &str)]) -> Scale {
    let logs = std::env::temp_dir().join("rcs-bench-scale.db");
    let mut specs: Vec<NodeSpec> = Vec::new();
    for i in 0..nodes - 1 {
        let spec = specs
            .iter()
            .fold(NodeSpec::new(&format!("s{i}"), &logs), |s, p| s.peer(p));
        specs.push(spec);
    }
    let topics_env = topics.to_string();
    let mut env = vec![("RCS_TOPICS", topics_env.as_str())];
    env.extend_from_slice(extra);
    let mut procs: Vec<Proc> = specs.iter().map(|s| spawn_with(s, None, &env)).collect();
    for proc in &mut procs {
        proc.ask(&format!("wait-peers {}", nodes - 2));
    }
    // The newcomer knows one seed; gossip does the rest.
    let newcomer = NodeSpec::new(&format!("s{}", nodes - 1), &logs).peer(&specs[0]);
    let started = Instant::now();
    procs.push(spawn_with(&newcomer, None, &env));
    for proc in &mut procs {
        proc.ask(&format!("wait-peers {}", nodes - 1));
    }
    let seed_join_ms = started.elapsed().as_secs_f64() * 1e3;

    // At rest: a second to settle, then CPU time over a window of 10 s.
    std::thread::sleep(Duration::from_secs(1));
    let window = Duration::from_secs(10);
    let before: Vec<_> = procs.iter().map(|p| cpu_ns(p.pid())).collect();
    std::thread::sleep(window);
    let after: Vec<_> = procs.iter().map(|p| cpu_ns(p.pid())).collect();
    let mut pct: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| cpu_delta(b, a) as f64 / 1e9 / window.as_secs_f64() * 100.0)
        .collect();
    pct.sort_by(|a, b| a.total_cmp(b));
    Scale {
        nodes,
        topics,
        seed_join_ms,
        idle_cpu_pct_median: pct[pct.len() / 2],
        idle_cpu_pct_max: pct[pct.len() - 1],
    }
}

/// CPU time of each thread of process `pid` (thread id -> ns), from the scheduler's own
/// account in `/proc/PID/task/TID/schedstat`: exact, where `/proc/PID/stat` is sampled at the
/// kernel's tick and so depends on where a node's short bursts of work fall between ticks.
fn cpu_ns(pid: u32) -> std::collections::HashMap<u32, u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads");
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            Some((tid, stat.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// CPU time (ns) between two readings of [`cpu_ns`]: a thread started since counts from
/// zero; one that ended since is left out (tokio's blocking threads, idle here).
fn cpu_delta(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}
