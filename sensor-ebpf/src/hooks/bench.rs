//! An empty program, for benchmarks only: attached to the same tracepoints as a real hook, it
//! measures the floor cost of the hook itself (`cargo xtask bench`, "floor" rows).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn tp_noop(_ctx: TracePointContext) -> u32 {
    0
}
