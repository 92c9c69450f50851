//! Entries larger than a link carries within one heartbeat interval still replicate: on links
//! of 4 MB/s between nodes, a 20 MB message commits (openraft gives an AppendEntries only
//! `heartbeat_interval`, here 100 ms, so sent inline it would time out on every try and the
//! commit would never come), small messages behind it commit too, and no node calls an
//! election meanwhile.

use std::time::{Duration, Instant};

use skein_proto::ingest::ingest_client::IngestClient;
use skein_tests::*;

const BIG: usize = 20_000_000;
const RATE: u64 = 4_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_a_heartbeat_can_carry_commits_over_slow_links() -> anyhow::Result<()>
{
    let c = Cluster::start_throttled(
        3,
        200,
        "commit_timeout = \"60s\"\n[node.raft]\nheartbeat_interval = \"100ms\"\n\
         election_timeout_min = \"1500ms\"\nelection_timeout_max = \"3s\"\n",
        RATE,
    )?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(30)).await?;
    let term = status(&c.addrs[leader]).await?.term;
    let addr = format!("http://{}", c.addrs[leader]);
    let client = IngestClient::connect(addr)
        .await?
        .max_encoding_message_size(64 << 20);

    let started = Instant::now();
    let mut big = client.clone();
    let big = tokio::spawn(async move { big.enqueue(sized_request("large", 0, BIG)).await });
    // Small messages proposed while the big one crosses the links: later entries, which
    // commit only after it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut small = Vec::new();
    for i in 1..=5 {
        let mut client = client.clone();
        small.push(tokio::spawn(async move {
            client.enqueue(sized_request("large", i, 2_000)).await
        }));
    }
    let big = big.await?;
    let took = started.elapsed();
    assert!(
        big.is_ok(),
        "the 20 MB message did not commit: {big:?}\n{}",
        c.logs()
    );
    for s in small {
        let s = s.await?;
        assert!(
            s.is_ok(),
            "a small message did not commit: {s:?}\n{}",
            c.logs()
        );
    }
    // Both followers hold it (the leader needed one; the other catches up the same way).
    for (i, a) in c.addrs.iter().enumerate() {
        wait_for(
            &format!("node {} to hold all six", i + 1),
            Duration::from_secs(30),
            || async { (local_ids(a).await.ok()?.len() == 6).then_some(()) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    }
    // Nobody lost patience with the leader while the entry was on its way.
    for a in &c.addrs {
        let s = status(a).await?;
        assert_eq!(s.term, term, "a new election happened\n{}", c.logs());
    }
    eprintln!("20 MB over {RATE} B/s links committed in {took:?}");
    Ok(())
}
