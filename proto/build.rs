//! Generates the `clinicwatch.v1` messages and service into `OUT_DIR` with protox (pure Rust,
//! no system `protoc`).

fn main() {
    let proto = "proto/clinicwatch/v1/ingest.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = match protox::compile([proto], ["proto"]) {
        Ok(f) => f,
        Err(e) => panic!("cannot compile `{proto}`: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure().compile_fds(fds) {
        panic!("cannot generate code for `{proto}`: {e}");
    }
}
