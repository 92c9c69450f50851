//! Compiles the protos under `proto/` with protox (pure Rust): no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "skein/ingest/v1/ingest.proto",
        "skein/admin/v1/admin.proto",
        "skein/raft/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    // Message bodies as `Bytes`: the edge may retry an Enqueue on another node, and cloning a
    // request must not copy the message each time.
    tonic_prost_build::configure()
        .bytes(".skein.ingest.v1.EnqueueRequest.data")
        .compile_fds(fds)?;
    Ok(())
}
