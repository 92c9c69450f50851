//! The DATA receiver's cost per byte: a message of realistic text (76-character lines, one
//! in 40 dot-stuffed) fed as a socket delivers it, in 16 KiB reads, through the terminator.
//!
//! Also the sender's side: dot-stuffing the same message for sending (`client::stuff`).
//!
//! Run: `cargo bench --workspace --bench data` (release profile; add `--profile dev` for the
//! build the tests use). Criterion reports time per message and bytes per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use skein_smtp::data::DataReceiver;

/// The wire form of a message of about `size` bytes: CRLF lines, dot-stuffed, terminated.
fn wire(size: usize) -> Vec<u8> {
    let mut out = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n".to_vec();
    let mut n = 0u32;
    while out.len() < size {
        n += 1;
        if n.is_multiple_of(40) {
            out.extend_from_slice(b"..a line the client dot-stuffed\r\n");
        } else {
            let line = format!(
                "{n:06} the quick brown fox jumps over the lazy dog, again and again and again"
            );
            out.extend_from_slice(&line.as_bytes()[..74]);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("data receiver");
    for size in [5 * 1024, 100 * 1024] {
        let input = wire(size);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &input, |b, input| {
            b.iter(|| {
                let mut rx = DataReceiver::new(50 << 20, 998, b"Received: by bench\r\n".to_vec());
                let mut end = None;
                for (i, chunk) in input.chunks(16 * 1024).enumerate() {
                    if let Some(at) = rx.feed(chunk) {
                        end = Some(i * 16 * 1024 + at);
                        break;
                    }
                }
                assert_eq!(end, Some(input.len()));
                rx.finish().expect("a well-formed message")
            })
        });
    }
    g.finish();
}

fn stuff(c: &mut Criterion) {
    let mut g = c.benchmark_group("dot-stuffing");
    for size in [5 * 1024, 100 * 1024] {
        let mut rx = DataReceiver::new(50 << 20, 998, Vec::new());
        let input = wire(size);
        rx.feed(&input);
        let body = rx.finish().expect("a well-formed message");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| skein_smtp::client::stuff(body))
        });
    }
    g.finish();
}

criterion_group!(benches, receive, stuff);
criterion_main!(benches);
