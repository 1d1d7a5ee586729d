//! Belady's optimum: the hit ratio of a cache that knows the future. On a miss the key is
//! admitted and, when over capacity, the resident key read again furthest in the future (the
//! new one included: a key never read again is not kept) is dropped. No policy can do better.

use std::collections::{BinaryHeap, HashMap};

pub fn hit_ratio(trace: &[u64], capacity: u64) -> f64 {
    const NEVER: usize = usize::MAX;
    let mut next = vec![NEVER; trace.len()];
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(trace.len() / 4);
    for (at, key) in trace.iter().enumerate().rev() {
        next[at] = seen.insert(*key, at).unwrap_or(NEVER);
    }
    drop(seen);
    // Resident keys with the position of their next read; the heap holds (next read, key)
    // and entries no longer current are skipped when they come up.
    let mut resident: HashMap<u64, usize> = HashMap::with_capacity(capacity as usize * 2);
    let mut heap: BinaryHeap<(usize, u64)> = BinaryHeap::with_capacity(capacity as usize * 2);
    let mut hits = 0u64;
    for (at, key) in trace.iter().enumerate() {
        let hit = resident.insert(*key, next[at]).is_some();
        if hit {
            hits += 1;
        }
        heap.push((next[at], *key));
        while resident.len() as u64 > capacity {
            let (when, victim) = heap.pop().expect("a resident key is in the heap");
            if resident.get(&victim) == Some(&when) {
                resident.remove(&victim);
            }
        }
        // Stale heap entries are dropped once they dominate.
        if heap.len() > 4 * capacity as usize + 1024 {
            heap = resident.iter().map(|(k, w)| (*w, *k)).collect();
        }
    }
    100.0 * hits as f64 / trace.len() as f64
}
