//! DKIM signing's cost per message: RSA-2048 and Ed25519, relaxed/relaxed, over messages of
//! 5 KB and 100 KB (the body hash grows with the size; the signature itself does not).
//!
//! Run: `cargo bench --workspace --bench sign` (release profile; add `--profile dev` for the
//! build the tests use). Criterion reports time per message and bytes per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use skein_dkim::{generate_ed25519, PrivateKey, Signer};

const RSA_PKCS1: &str = include_str!("../testdata/rsa2048-pkcs1.pem");

/// A message of about `size` bytes with the headers a sender signs.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: News <news@example.com>\r\nTo: b@example.net\r\nSubject: bench\r\n\
Date: Tue, 1 Dec 2026 00:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
        .to_vec();
    while m.len() < size {
        m.extend_from_slice(
            b"the quick brown fox jumps over the lazy dog,  again\t and again \r\n",
        );
    }
    m
}

fn sign(c: &mut Criterion) {
    let keys = [
        (
            "rsa2048",
            PrivateKey::from_pem(RSA_PKCS1).expect("the test key"),
        ),
        (
            "ed25519",
            PrivateKey::from_pem(&generate_ed25519().expect("a key")).expect("a key"),
        ),
    ];
    let mut g = c.benchmark_group("dkim sign");
    for (name, key) in keys {
        let signer = Signer::new("example.com", "s1", key).expect("a signer");
        for size in [5 * 1024, 100 * 1024] {
            let m = message(size);
            g.throughput(Throughput::Bytes(m.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &m, |b, m| {
                b.iter(|| {
                    let h = signer.sign(m).expect("signed");
                    assert!(h.starts_with("DKIM-Signature:"));
                    h
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
