//! The standard gRPC health protocol on queue nodes: every node of a cluster with a leader
//! serves; only the leader serves sender sessions; an unknown service is NOT_FOUND. And gRPC
//! server reflection, which tools such as grpcurl use to call a node without .proto files.

use std::time::Duration;

use skein_proto::health::health_check_response::ServingStatus;
use skein_proto::health::health_client::HealthClient;
use skein_proto::health::HealthCheckRequest;
use skein_tests::*;
use tokio_stream::StreamExt as _;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

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

    // Server reflection names every service and describes them, comments included.
    let services = reflect(
        &c.addrs[follower],
        MessageRequest::ListServices(String::new()),
    )
    .await?;
    let MessageResponse::ListServicesResponse(list) = services else {
        anyhow::bail!("{services:?}")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for s in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "skein.admin.v1.Admin",
        "skein.ingest.v1.Ingest",
        "skein.work.v1.Work",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} in {names:?}");
    }
    let files = reflect(
        &c.addrs[leader],
        MessageRequest::FileContainingSymbol("skein.admin.v1.Admin".into()),
    )
    .await?;
    let MessageResponse::FileDescriptorResponse(files) = files else {
        anyhow::bail!("{files:?}")
    };
    let admin = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost::Message::decode(b.as_slice()))
        .collect::<Result<Vec<prost_types::FileDescriptorProto>, _>>()?
        .into_iter()
        .find(|f| f.package() == "skein.admin.v1")
        .expect("the Admin file");
    let methods: Vec<&str> = admin.service[0].method.iter().map(|m| m.name()).collect();
    assert!(
        methods.contains(&"AddIp") && methods.contains(&"QueueSummary"),
        "{methods:?}"
    );
    let e = reflect(
        &c.addrs[leader],
        MessageRequest::FileContainingSymbol("no.such.Thing".into()),
    )
    .await
    .unwrap_err();
    let status = e.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
    Ok(())
}

/// One server-reflection request and its answer.
async fn reflect(addr: &str, request: MessageRequest) -> anyhow::Result<MessageResponse> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut c = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await?
        .expect("an answer")?;
    answer
        .message_response
        .ok_or_else(|| anyhow::anyhow!("an empty answer"))
}

/// A node keeps at most `max_connections` gRPC connections open: with both taken (idle
/// clients), a third client gets no answer until one of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_at_most_max_connections() -> anyhow::Result<()> {
    let c = Cluster::start(1, 114, "max_connections = 2")?;
    let addr = c.addrs[0].clone();
    wait_for("the node", Duration::from_secs(30), || async {
        check(&addr, "").await.ok()
    })
    .await?;
    let a = tokio::net::TcpStream::connect(&addr).await?;
    let b = tokio::net::TcpStream::connect(&addr).await?;
    // Let the node take both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blocked = tokio::time::timeout(Duration::from_secs(1), check(&addr, "")).await;
    assert!(
        blocked.is_err(),
        "a third connection is not served: {blocked:?}"
    );
    drop(a);
    let served = tokio::time::timeout(Duration::from_secs(5), check(&addr, "")).await;
    assert!(
        matches!(served, Ok(Ok(_))),
        "served once one closed: {served:?}"
    );
    drop(b);
    Ok(())
}
