//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "switchyard/common/v1/common.proto",
        "switchyard/agent/v1/agent.proto",
        "switchyard/node/v1/node.proto",
        "switchyard/routing/v1/routing.proto",
        "switchyard/operator/v1/operator.proto",
        "switchyard/raft/v1/raft.proto",
        "switchyard/cell/v1/cell.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `fedctl -o json` prints API messages as they are; nodes persist task specs.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds)?;
    Ok(())
}
