//! The README's first command: the quickstart runs three nodes, shows the reload and a hit, and
//! exits 0.

#[path = "support/cluster.rs"]
mod cluster;

#[test]
fn the_quickstart_shows_a_write_reaching_two_nodes_and_exits_cleanly() {
    let exe = cluster::node_binary()
        .with_file_name(format!("quickstart{}", std::env::consts::EXE_SUFFIX));
    let output = std::process::Command::new(exe)
        .env("RCS_QUICKSTART_NO_BUILD", "1")
        .output()
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in ["serves v2", "hit: true", "all 3 nodes quit cleanly"] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
}
