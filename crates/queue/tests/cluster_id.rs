//! The replicated cluster id (format 7): the first `ClusterId` applied wins, and it travels in
//! snapshots, so every node of a cluster founded before ids agrees on the one it gets.

mod common;

use common::Fixture;
use skein_queue::{Request, Response, CLUSTER_ID_FORMAT};

#[tokio::test]
async fn the_first_cluster_id_applied_wins_and_travels_in_snapshots() {
    let mut f = Fixture::new();
    f.apply(Request::SetFormat {
        version: CLUSTER_ID_FORMAT,
    })
    .await;
    assert_eq!(f.reader.replicated_cluster_id().unwrap(), None);
    assert_eq!(
        f.apply(Request::ClusterId("aaaa".into())).await,
        Response::ClusterId("aaaa".into())
    );
    // A second leader's proposal, applied later, changes nothing and is told the id in force.
    assert_eq!(
        f.apply(Request::ClusterId("bbbb".into())).await,
        Response::ClusterId("aaaa".into())
    );
    assert_eq!(
        f.reader.replicated_cluster_id().unwrap().as_deref(),
        Some("aaaa")
    );
    // This node's own record is apart: applying does not write it.
    assert_eq!(f.reader.cluster_id().unwrap(), None);
    let copy = f.copy_by_snapshot().await;
    assert_eq!(
        copy.reader.replicated_cluster_id().unwrap().as_deref(),
        Some("aaaa")
    );
}
