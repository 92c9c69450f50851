//! The leader holds at most `assignment_memory` bytes of bodies for senders that do not take
//! their assignments: a stuck sender with 100 free slots gets a few 1 MB messages (the 3 MB
//! budget, plus the one gRPC is sending), not all 20; once it reads, the rest follows.

use std::time::Duration;

use skein_proto::ingest::ingest_client::IngestClient;
use skein_proto::work::sender_message::Msg;
use skein_proto::work::work_client::WorkClient;
use skein_proto::work::{Hello, SenderMessage, SourceIp};
use skein_tests::*;
use tokio_stream::StreamExt as _;

const MESSAGES: usize = 20;
const SIZE: usize = 1_000_000;

async fn leased(addr: &str, ids: &[String]) -> anyhow::Result<usize> {
    let mut n = 0;
    for id in ids {
        let m = message_status(addr, id).await?;
        n += m.recipients.iter().filter(|r| r.state == "leased").count();
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_does_not_read_holds_only_the_budget() -> anyhow::Result<()> {
    let c = Cluster::start(1, 220, "[node.delivery]\nassignment_memory = \"3MB\"\n")?;
    c.leader(&[0], Duration::from_secs(30)).await?;
    let addr = c.addrs[0].clone();
    let mut ingest = IngestClient::connect(format!("http://{addr}"))
        .await?
        .max_encoding_message_size(64 << 20);
    let mut ids = Vec::new();
    for i in 0..MESSAGES {
        ids.push(
            ingest
                .enqueue(sized_request("budget", i, SIZE))
                .await?
                .into_inner()
                .id,
        );
    }

    // A sender with room for 100 that says hello and then does not read.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(SenderMessage {
        msg: Some(Msg::Hello(Hello {
            sender: "stuck".into(),
            source_ips: vec![SourceIp {
                ip: "127.0.0.225".into(),
                ehlo: "stuck.example.com".into(),
            }],
            max_in_flight: 100,
            active_leases: Vec::new(),
        })),
    })
    .await?;
    // Small HTTP/2 windows, so what the transport buffers for it is small too.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await?;
    let mut work = WorkClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = work
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    wait_for("the first lease", Duration::from_secs(20), || async {
        (leased(&addr, &ids).await.ok()? > 0).then_some(())
    })
    .await?;
    // Rounds keep running (every 500 ms at most): give them time to hand out more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held_back = leased(&addr, &ids).await?;
    eprintln!("{held_back} of {MESSAGES} leased while the sender reads nothing");
    assert!(
        (1..=5).contains(&held_back),
        "{held_back} of {MESSAGES} 1 MB messages leased to a sender that reads nothing \
         (budget 3 MB)\n{}",
        c.logs()
    );

    // Reading, it gets every message.
    let mut got = 0;
    while got < MESSAGES {
        let a = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("only {got} assignments came\n{}", c.logs()))?
            .ok_or_else(|| anyhow::anyhow!("stream ended after {got}"))??;
        assert_eq!(a.data.len(), SIZE);
        got += 1;
    }
    drop(tx);
    Ok(())
}
