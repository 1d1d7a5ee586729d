//! DNS discovery through the system resolver: nodes that know the cluster only by a name,
//! which resolves to several addresses, form a full mesh; an address added to the name later
//! is dialled by every node; writes reach every node.
//!
//! The name lives in an `/etc/hosts` of the test's own, bind-mounted over the real one in a
//! private mount namespace per node (`unshare --mount`), so glibc's resolver answers from it
//! as it would from DNS. That needs root, hence `#[ignore]`; `.ci/run` (as root) runs it:
//!
//! ```text
//! cargo test --test dns_discovery_dials_every_address -- --ignored
//! ```

#[path = "support/cluster.rs"]
mod cluster;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;

use cluster::{free_port, put, wait_for_peers, wait_for_value, Cluster, NodeProcess, NodeSpec};

const NAME: &str = "rcs-cluster.test";

/// Starts `spec` in a mount namespace of its own whose `/etc/hosts` is `hosts`.
fn start_with_hosts(spec: &NodeSpec, hosts: &Path) -> NodeProcess {
    let script = r#"mount --bind "$0" /etc/hosts && exec "$@""#;
    let wrapper = [OsStr::new("unshare"), "--mount".as_ref(), "--".as_ref()];
    let wrapper = wrapper
        .into_iter()
        .chain(["sh".as_ref(), "-c".as_ref(), script.as_ref()]);
    let command = spec
        .command_under(wrapper.chain([hosts.as_os_str()]))
        .expect("the node's command");
    NodeProcess::spawn(spec.clone(), command)
        .unwrap_or_else(|e| panic!("starting {} (needs root for unshare): {e}", spec.name))
}

/// A node on `ip:port` that finds its peers only through `NAME`, resolved every 100 ms.
fn discovering(cluster: &Cluster, name: &str, ip: [u8; 4], port: u16) -> NodeSpec {
    let mut spec = cluster.spec(name);
    spec.listen = SocketAddr::from((ip, port));
    spec.arg("--discover")
        .arg(&format!("{NAME}:{port}"))
        .arg("--discover-every-ms")
        .arg("100")
}

fn hosts(path: &Path, ips: &[&str]) {
    let lines: String = ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    // Rewritten in place: the bind mounts see the same file.
    std::fs::write(path, format!("127.0.0.1 localhost\n{lines}")).expect("write hosts");
}

#[test]
#[ignore = "needs root: each node gets a private mount namespace with its own /etc/hosts"]
fn nodes_known_only_by_one_name_mesh_and_dial_an_address_added_later() {
    let cluster = Cluster::new();
    let hosts_file = cluster.db().with_file_name("hosts");
    hosts(&hosts_file, &["127.0.0.2", "127.0.0.3"]);
    let port = free_port();
    let a = discovering(&cluster, "a", [127, 0, 0, 2], port);
    let b = discovering(&cluster, "b", [127, 0, 0, 3], port);
    // c is not in the name yet, and dials nobody: only discovery can bring it in.
    let mut c_spec = cluster.spec("c");
    c_spec.listen = SocketAddr::from(([127, 0, 0, 4], port));
    let mut a = start_with_hosts(&a, &hosts_file);
    let mut b = start_with_hosts(&b, &hosts_file);
    let mut c = start_with_hosts(&c_spec, &hosts_file);
    wait_for_peers(&mut a, 1);
    wait_for_peers(&mut b, 1);
    assert!(
        c.peers().is_empty(),
        "c was dialled before it was discoverable"
    );

    hosts(&hosts_file, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    for node in [&mut a, &mut b, &mut c] {
        wait_for_peers(node, 2);
    }
    assert_eq!(c.peers(), ["a@127.0.0.2", "b@127.0.0.3"]);

    for node in [&mut a, &mut b, &mut c] {
        cluster::wait_for_health(node, "healthy");
    }
    put(&mut c, "user:1", "alice");
    wait_for_value(&mut a, "user:1", "alice");
    wait_for_value(&mut b, "user:1", "alice");
    put(&mut a, "user:1", "alicia");
    wait_for_value(&mut b, "user:1", "alicia");
    wait_for_value(&mut c, "user:1", "alicia");
}
