//! The README's example, as `examples/single_node.rs`, runs: a miss, a hit, an invalidation.

use std::process::Command;

use ractor_cache_sync_testkit::process::example_binary;

#[test]
fn the_single_node_example_misses_hits_and_invalidates() {
    let output = Command::new(example_binary("single_node"))
        .output()
        .expect("run the single_node example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(r#"Some(("user 7", 1)) (hit: false), then hit: true"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("after the invalidation: 0 entries"),
        "{stdout}"
    );
}
