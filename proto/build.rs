//! Generates the `clinicwatch.v1` messages and service into `OUT_DIR` with protox (pure Rust,
//! no system `protoc`).

fn main() {
    let protos = [
        "proto/clinicwatch/v1/ingest.proto",
        "proto/clinicwatch/v1/soc.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = match protox::compile(protos, ["proto"]) {
        Ok(f) => f,
        Err(e) => panic!("cannot compile {protos:?}: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure().compile_fds(fds) {
        panic!("cannot generate code for {protos:?}: {e}");
    }
}
