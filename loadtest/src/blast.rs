//! `skein-load blast`: submits messages over plain SMTP from many concurrent sessions as fast
//! as they are answered (closed loop, like Postfix's smtp-source) and reports the acceptance
//! rate and the latency from the final `.` to the `250` reply (p50/p90/p99/max). Works
//! against any SMTP server (Skein, Postfix) so the figures compare like with like.
//!
//! `skein-load blast --sessions 20 --messages 20000 --size 5120 127.0.0.1:2525`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;

use crate::smtp::{connect, expect, reply};

/// What to send, where.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// host:port of the SMTP server.
    server: String,
    /// Concurrent sessions.
    #[arg(long, short = 's', default_value_t = 20)]
    sessions: u64,
    /// Messages in total.
    #[arg(long, short = 'm', default_value_t = 20_000)]
    messages: u64,
    /// Approximate message size in bytes.
    #[arg(long, short = 'l', default_value_t = 5120)]
    size: usize,
    /// Messages per connection before reconnecting.
    #[arg(long, default_value_t = 100)]
    per_connection: u64,
    /// Recipients, comma-separated: message n goes to the (n mod count)-th.
    #[arg(long, default_value = "rcpt@example.net", value_delimiter = ',')]
    to: Vec<String>,
    /// Label printed on the result line.
    #[arg(long, default_value = "skein-load")]
    label: String,
}

async fn session(
    args: Args,
    next: Arc<AtomicU64>,
    body: Arc<Vec<u8>>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    'conn: loop {
        let (mut rd, mut wr) = connect(&args.server).await?;
        for _ in 0..args.per_connection {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= args.messages {
                let _ = wr.write_all(b"QUIT\r\n").await;
                break 'conn;
            }
            let to = &args.to[(n % args.to.len() as u64) as usize];
            // PIPELINING: envelope and DATA in one write, as smtp-source does.
            wr.write_all(
                format!("MAIL FROM:<sender@example.com>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes(),
            )
            .await?;
            expect(&mut rd, 250).await?;
            expect(&mut rd, 250).await?;
            expect(&mut rd, 354).await?;
            wr.write_all(&body).await?;
            let t = Instant::now();
            wr.write_all(b".\r\n").await?;
            let (code, _) = reply(&mut rd).await?;
            if code == 250 {
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
            } else {
                failed += 1;
            }
        }
        wr.write_all(b"QUIT\r\n").await?;
    }
    Ok((hist, failed))
}

/// Runs `blast`: prints one result line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let line = "x".repeat(76) + "\r\n";
    anyhow::ensure!(!args.to.is_empty(), "--to needs a recipient");
    let mut body =
        b"From: <sender@example.com>\r\nTo: <undisclosed-recipients:;>\r\nSubject: load\r\n\r\n"
            .to_vec();
    while body.len() + line.len() <= args.size {
        body.extend_from_slice(line.as_bytes());
    }
    let body = Arc::new(body);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(session(args.clone(), next.clone(), body.clone())))
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for t in tasks {
        let (h, f) = t.await??;
        hist.add(h)?;
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    let ms = |q: f64| Duration::from_micros(hist.value_at_quantile(q)).as_secs_f64() * 1000.0;
    println!(
        "{} accepted={} failed={} seconds={:.2} rate={:.0}/s dot-to-250 p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        args.label,
        hist.len(),
        failed,
        secs,
        hist.len() as f64 / secs,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    Ok(())
}
