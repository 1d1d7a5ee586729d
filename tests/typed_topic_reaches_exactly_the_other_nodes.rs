//! A typed topic's messages reach every other node, decoded and in order per sender, and never
//! the sender itself; a message of another type on the same topic name (one that is not a
//! valid encoding of the topic's type) is counted as a decode failure by the receivers, never
//! mis-decoded. A node's own subscribers get its message only when it is published with
//! `Recipients::RemoteAndLocal`.
//!
//! The multi-node test runs `examples/typed_topic.rs` as one process per node (`ractor::pg` is
//! global to a process).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ractor_cache_sync::synchronization::{Delivery, Recipients};
use ractor_cache_sync::{Node, NodeConfig, Synchronization, Topic};
use ractor_cache_sync_testkit::process::example_binary;
use ractor_cache_sync_testkit::{eventually, free_port, NodeProcess, NodeSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Generous: a liveness bound for a loaded 2-core machine, not a performance claim.
const DEADLINE: Duration = Duration::from_secs(20);

/// What one node received: origin, id, tenant.
type Received = Vec<(String, u64, String)>;

/// A typed_topic node on a free port, its log in `dir`.
fn spec(dir: &Path, name: &str) -> NodeSpec {
    NodeSpec::new(name, &dir.join("unused.db")).program(example_binary("typed_topic"))
}

/// Starts the node: the kit's command line minus `--db`, which this example has no use for.
fn start(spec: &NodeSpec) -> NodeProcess {
    let log =
        std::fs::File::create(spec.log_dir.join(format!("{}.log", spec.name))).expect("log file");
    let mut command = Command::new(&spec.program);
    command
        .args(["--name", &spec.name, "--listen", &spec.listen.to_string()])
        .args(
            spec.peers
                .iter()
                .flat_map(|p| ["--peer".to_owned(), p.to_string()]),
        )
        .args(&spec.extra)
        .env("RACTOR_CACHE_SYNC_COOKIE", &spec.cookie)
        .stderr(log);
    NodeProcess::spawn(spec.clone(), command)
        .unwrap_or_else(|e| panic!("starting {}: {e}", spec.name))
}

/// Waits until `node` has `count` ready sessions and the topic actors of as many peers are
/// members of the topic on it and heard from: from then on its publishes reach all of them.
fn wait_for_topic_peers(node: &mut NodeProcess, count: usize) {
    let name = node.spec.name.clone();
    eventually(DEADLINE, || {
        let stats = node.ask("stats");
        let joined = stats["peer_joins"].as_u64()? >= count as u64;
        (node.peers().len() == count && joined && stats["health"] == "healthy").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{name} never had {count} topic peers: {}",
            node.ask("stats")
        )
    });
}

fn publish(node: &mut NodeProcess, id: u64, tenant: &str) {
    let reply = node.ask(&format!("publish {id} {tenant}"));
    assert_eq!(reply["ok"], "publish", "{}: {reply}", node.spec.name);
}

fn received(node: &mut NodeProcess) -> Received {
    let reply = node.ask("received");
    let events = reply["events"].as_array().expect("an events list").clone();
    events.iter().map(event).collect()
}

fn event(value: &Value) -> (String, u64, String) {
    let field = |name: &str| value[name].as_str().map(str::to_owned);
    let parsed = (field("origin"), value["id"].as_u64(), field("tenant"));
    match parsed {
        (Some(origin), Some(id), Some(tenant)) => (origin, id, tenant),
        _ => panic!("malformed event {value}"),
    }
}

/// Polls `received` until it holds at least `count` events.
fn wait_for_events(node: &mut NodeProcess, count: usize) -> Received {
    let name = node.spec.name.clone();
    let mut last = Received::new();
    eventually(DEADLINE, || {
        last = received(node);
        (last.len() >= count).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("{name} received {} of {count} events: {last:?}", last.len()))
}

/// The ids `origin` sent, in arrival order, each checked to carry `tenant`.
fn ids_from(events: &Received, origin: &str, tenant: &str) -> Vec<u64> {
    let from_origin = events.iter().filter(|(o, _, _)| o == origin);
    from_origin
        .map(|(_, id, t)| {
            assert_eq!(
                t, tenant,
                "event {id} from {origin} decoded with the wrong tenant"
            );
            *id
        })
        .collect()
}

#[test]
fn each_event_reaches_exactly_the_other_nodes_and_a_wrong_type_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = spec(dir.path(), "a");
    let b = spec(dir.path(), "b").peer(&a);
    let c = spec(dir.path(), "c").peer(&a).peer(&b);
    let mut nodes: Vec<NodeProcess> = [&a, &b, &c].into_iter().map(start).collect();
    for node in &mut nodes {
        wait_for_topic_peers(node, 2);
    }
    for i in 0..20 {
        publish(&mut nodes[0], 1 + i, "ta");
        publish(&mut nodes[1], 101 + i, "tb");
    }
    let (from_a, from_b): (Vec<u64>, Vec<u64>) = ((1..=20).collect(), (101..=120).collect());
    let (origin_a, origin_b) = ("a@127.0.0.1", "b@127.0.0.1");

    let at_c = wait_for_events(&mut nodes[2], 40);
    assert_eq!(at_c.len(), 40, "c: {at_c:?}");
    assert_eq!(ids_from(&at_c, origin_a, "ta"), from_a, "c, in a's order");
    assert_eq!(ids_from(&at_c, origin_b, "tb"), from_b, "c, in b's order");
    let at_a = wait_for_events(&mut nodes[0], 20);
    assert_eq!(ids_from(&at_a, origin_b, "tb"), from_b, "a: {at_a:?}");
    assert_eq!(
        at_a.len(),
        20,
        "a received something besides b's events: {at_a:?}"
    );
    let at_b = wait_for_events(&mut nodes[1], 20);
    assert_eq!(ids_from(&at_b, origin_a, "ta"), from_a, "b: {at_b:?}");
    assert_eq!(
        at_b.len(),
        20,
        "b received something besides a's events: {at_b:?}"
    );
    for node in &mut nodes {
        assert_eq!(node.stat("decode_failures"), 0, "{}", node.spec.name);
    }

    // A misconfigured node joins `events` with `String` messages.
    let w = spec(dir.path(), "w")
        .peer(&a)
        .peer(&b)
        .peer(&c)
        .arg("--wrong-type");
    let mut w = start(&w);
    wait_for_topic_peers(&mut w, 3);
    for node in &mut nodes {
        let name = node.spec.name.clone();
        eventually(DEADLINE, || (node.peers().len() == 3).then_some(()))
            .unwrap_or_else(|| panic!("{name} never saw w"));
    }
    let before: Vec<Received> = nodes.iter_mut().map(received).collect();
    publish(&mut w, 7, "w");
    assert_eq!(w.stat("published"), 1);
    for (node, before) in nodes.iter_mut().zip(&before) {
        let name = node.spec.name.clone();
        eventually(DEADLINE, || {
            (node.stat("decode_failures") >= 1).then_some(())
        })
        .unwrap_or_else(|| panic!("{name} never counted w's string: {}", node.ask("stats")));
        // The failure was counted while handling w's message, so it is settled by now.
        assert_eq!(
            &received(node),
            before,
            "{name} mis-decoded w's string as an event"
        );
        assert_eq!(node.stat("received"), before.len() as u64, "{name}");
    }
}

/// The same shape as the example's `Event`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    UserUpdated { id: u64, tenant: String },
}

/// The next message a subscriber receives within `wait`, skipping repair notices.
async fn next_message(
    deliveries: &mut UnboundedReceiver<Delivery<Event>>,
    wait: Duration,
) -> Option<(String, Event)> {
    let messages = async {
        while let Some(delivery) = deliveries.recv().await {
            if let Delivery::Message {
                origin, message, ..
            } = delivery
            {
                return Some((origin, message));
            }
        }
        None
    };
    tokio::time::timeout(wait, messages).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_subscribers_get_a_message_only_with_remote_and_local() {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = NodeConfig::new("solo", "test-cookie-0123456789abcdef").listen(listen);
    let node = Node::start(config).await.expect("node");
    let events = Synchronization::<Event>::spawn(Topic::new("events"), &node)
        .await
        .expect("synchronization actor");
    let (tx, mut deliveries) = unbounded_channel();
    events
        .subscribe(move |delivery| {
            let _ = tx.send(delivery);
        })
        .expect("subscribe");
    let event = |id: u64| Event::UserUpdated {
        id,
        tenant: "t".to_owned(),
    };

    events
        .publish_to(&event(1), Recipients::RemoteAndLocal)
        .expect("publish to remote and local");
    let local = next_message(&mut deliveries, DEADLINE).await;
    assert_eq!(local, Some((node.name().to_owned(), event(1))));

    events.publish(&event(2)).expect("publish to remote");
    // That something does not arrive can only be checked by waiting a bounded while.
    let unexpected = next_message(&mut deliveries, Duration::from_millis(300)).await;
    assert_eq!(
        unexpected, None,
        "a remote-only publish was delivered locally"
    );
    // And the next local delivery is the next local publish, not the remote-only one.
    events
        .publish_to(&event(3), Recipients::RemoteAndLocal)
        .expect("publish to remote and local");
    let local = next_message(&mut deliveries, DEADLINE).await;
    assert_eq!(local, Some((node.name().to_owned(), event(3))));
    assert_eq!(events.stats().published, 3);
    node.shutdown().await;
}
