//! The cluster as writers see it (`CommandLog`), three nodes in one process
//! on loopback: a commit on any node is acknowledged after a quorum has it,
//! and the committing node's own store reflects it on return; roles name the
//! primary; bad commands are refused before anything is proposed.

use std::sync::Arc;
use std::time::Duration;

use haven_ha::{ClusterConfig, ClusterNode, HaError};
use haven_store::{Command, CommandLog, CommitError, Role, StoreError};
use serde_json::json;

struct Node {
    node: Arc<ClusterNode>,
    _server: tokio::task::JoinHandle<()>,
}

async fn cluster(dir: &std::path::Path) -> Vec<Node> {
    let mut listeners = Vec::new();
    let mut toml = String::from("secret = \"in-process-secret-0123\"\n");
    for id in 1..=3u64 {
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.{}:0", 120 + id))
            .await
            .unwrap();
        let role = if id == 3 { "witness" } else { "data" };
        toml.push_str(&format!(
            "[[node]]\nid = {id}\naddr = \"{}\"\nrole = \"{role}\"\n",
            listener.local_addr().unwrap()
        ));
        listeners.push(listener);
    }
    let config = ClusterConfig::parse(&toml, "cluster.toml").unwrap();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let node = ClusterNode::start(config.clone(), id, &dir.join(format!("n{id}")))
            .await
            .unwrap();
        let router = haven_ha::router(node.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        nodes.push(Node {
            node,
            _server: server,
        });
    }
    nodes
}

async fn primary(nodes: &[Node]) -> usize {
    for _ in 0..500 {
        if let Some(i) = nodes
            .iter()
            .position(|n| n.node.role().borrow().is_primary())
        {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no primary");
}

fn put(key: &str, n: u64) -> Command {
    Command::Put {
        collection: "plans".into(),
        key: key.into(),
        value: json!(n),
        expected_version: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_from_any_node_are_replicated_and_visible_locally_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path()).await;
    let p = primary(&nodes).await;
    let f = if p == 0 { 1 } else { 0 };
    let primary_url = format!(
        "http://{}",
        nodes[p].node.config().node(p as u64 + 1).unwrap().addr
    );

    let Role::Primary { term } = nodes[p].node.role().borrow().clone() else {
        panic!()
    };
    assert!(term >= 1);
    // The follower learns who the primary is from the next heartbeat.
    let mut role = nodes[f].node.role();
    let role = tokio::time::timeout(
        Duration::from_secs(5),
        role.wait_for(|r| matches!(r, Role::Follower { primary: Some(_) })),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(
        role,
        Role::Follower {
            primary: Some(primary_url)
        }
    );
    assert!(
        !nodes[2].node.role().borrow().is_primary(),
        "a witness is never primary"
    );

    let on_primary = nodes[p].node.commit(vec![put("a", 1)]).await.unwrap();
    // A follower forwards to the primary; on return its own store has it.
    let on_follower = nodes[f]
        .node
        .commit(vec![put("b", 2), put("c", 3)])
        .await
        .unwrap();
    assert_eq!(on_follower.len(), 2);
    assert!(
        on_follower[0].index > on_primary[0].index,
        "fencing tokens only grow"
    );
    assert_eq!(
        nodes[f]
            .node
            .store()
            .get("plans", "b")
            .unwrap()
            .unwrap()
            .value,
        json!(2)
    );

    // A bad command is refused before it reaches the log.
    let bad = Command::Put {
        collection: String::new(),
        key: "k".into(),
        value: json!(0),
        expected_version: None,
    };
    let err = nodes[f]
        .node
        .commit(vec![put("d", 4), bad])
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommitError::Store(StoreError::InvalidName { .. })),
        "{err}"
    );

    // Every node, the witness included, converges on the same state.
    for _ in 0..200 {
        if nodes
            .iter()
            .all(|n| n.node.store().applied_index().unwrap() == 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in &nodes {
        assert_eq!(n.node.store().applied_index().unwrap(), 3);
        assert!(n.node.store().get("plans", "d").unwrap().is_none());
    }

    // A witness cannot be made primary.
    let refused = nodes[p].node.switchover(Some(3)).await.unwrap_err();
    assert!(matches!(refused, HaError::Refused(_)), "{refused}");
}
