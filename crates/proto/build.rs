//! Compiles the protos under `proto/` with protox (pure Rust): no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary reused from a cache built in another checkout
    // must still find this checkout's protos.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "skein/ingest/v1/ingest.proto",
        "skein/admin/v1/admin.proto",
        "skein/raft/v1/raft.proto",
        "skein/work/v1/work.proto",
        "grpc/health/v1/health.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    // The same descriptors, served by gRPC server reflection (`grpcurl list` against a node).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("skein_descriptor.bin");
    std::fs::write(out, prost::Message::encode_to_vec(&fds))?;
    // Message bodies as `Bytes`: the edge may retry an Enqueue on another node, and cloning a
    // request must not copy the message each time. Decoded as `Bytes`, a field is a slice of
    // the received buffer instead of a copy of it (Raft payloads carry whole log entries,
    // assignments whole messages).
    tonic_prost_build::configure()
        .bytes(".skein.ingest.v1.EnqueueRequest.data")
        .bytes(".skein.raft.v1.RaftPayload.data")
        .bytes(".skein.work.v1.Assignment.data")
        .compile_fds(fds)?;
    Ok(())
}
