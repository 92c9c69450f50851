//! The standard gRPC health protocol on queue nodes: every node of a cluster with a leader
//! serves; only the leader serves sender sessions; an unknown service is NOT_FOUND.

use std::time::Duration;

use skein_proto::health::health_check_response::ServingStatus;
use skein_proto::health::health_client::HealthClient;
use skein_proto::health::HealthCheckRequest;
use skein_tests::*;
use tokio_stream::StreamExt as _;

async fn check(addr: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut c = HealthClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_report_their_health() -> anyhow::Result<()> {
    let c = Cluster::start(3, 50, "")?;
    let leader = c
        .leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    let follower = (leader + 1) % 3;
    for addr in &c.addrs {
        assert_eq!(check(addr, "").await?, ServingStatus::Serving, "{addr}");
        assert_eq!(
            check(addr, "skein.admin.v1.Admin").await?,
            ServingStatus::Serving
        );
    }
    let work = "skein.work.v1.Work";
    assert_eq!(check(&c.addrs[leader], work).await?, ServingStatus::Serving);
    assert_eq!(
        check(&c.addrs[follower], work).await?,
        ServingStatus::NotServing,
        "sender sessions go to the leader"
    );
    let e = check(&c.addrs[leader], "no.such.Service")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("skein.admin.v1.Admin"),
        "{}",
        e.message()
    );

    // Watch gives the status at once.
    let mut h = HealthClient::connect(format!("http://{}", c.addrs[follower])).await?;
    let mut stream = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await?
        .expect("a status")?;
    assert_eq!(first.status, ServingStatus::Serving as i32);
    Ok(())
}
