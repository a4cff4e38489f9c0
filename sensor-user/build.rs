//! Builds the kernel programs (`sensor-ebpf`) with aya-build and bpf-linker, for embedding.
//!
//! Without bpf-linker (plain `cargo check` / `cargo test` on a fresh machine) the object is
//! left empty and the agent says at run time how to get it (`cargo xtask setup`).

use std::{env, path::PathBuf};

fn bpf_linker_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into()))
    {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs
}

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../sensor-ebpf");
    println!("cargo:rerun-if-env-changed=CLINICWATCH_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    let dirs = bpf_linker_dirs();
    // Rebuild once bpf-linker appears (a missing file counts as changed) or changes.
    if let Some(home_bin) = dirs.last() {
        println!(
            "cargo:rerun-if-changed={}",
            home_bin.join("bpf-linker").display()
        );
    }
    let has_bpf_linker = dirs.iter().any(|d| d.join("bpf-linker").is_file());
    if env::var_os("CLINICWATCH_SKIP_EBPF").is_some() || !has_bpf_linker {
        println!("cargo:warning=no eBPF object: bpf-linker not found or CLINICWATCH_SKIP_EBPF set; the agent will say so if started (run `cargo xtask setup`)");
        std::fs::write(out_dir.join("sensor-ebpf"), [])?;
        return Ok(());
    }
    // The nested eBPF build needs `-Z build-std=core` on the stable toolchain: allow it there
    // only (this variable reaches the nested cargo, not the rest of the workspace).
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    if let Some(home) = env::var_os("HOME") {
        let bin = PathBuf::from(home).join(".cargo/bin");
        let mut path: Vec<PathBuf> = env::var_os("PATH")
            .map(|p| env::split_paths(&p).collect())
            .unwrap_or_default();
        path.push(bin);
        // SAFETY: as above.
        unsafe { env::set_var("PATH", env::join_paths(path)?) };
    }
    let root_dir = ebpf_dir.canonicalize()?;
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sensor-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("1.95.0"),
    )
}
