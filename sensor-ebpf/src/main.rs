//! clinicwatch kernel programs.
//!
//! Every hot hook asks "is this process watched?" first (one hash lookup in `WATCHED`),
//! counts reads and bytes in maps, and sends only rare things (exec, fork, exit, first open
//! of a file, connect, flow close, protected-file opens) through the `EVENTS` ring buffer.
//! Failures are counted per hook in `HOOK_COUNTERS`, never silently lost.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has atomic add but no compare-and-swap, so `AtomicU64::fetch_add`
// is not available. The nested eBPF build runs with RUSTC_BOOTSTRAP=1 (see ../shared/BUILD.md).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod emit;
mod hooks;
mod kernel;
mod maps;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
