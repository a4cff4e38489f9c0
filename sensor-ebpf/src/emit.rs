//! Counting and ring-buffer helpers shared by every hook.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, helpers::generated::bpf_ktime_get_boot_ns,
    maps::ring_buf::RingBufEntry, EbpfContext,
};
use aya_log_ebpf::warn;
use clinicwatch_common::{EventHeader, HookCounters};

use crate::maps::{EVENTS, HOOK_COUNTERS, QUOTAS};

/// Which counter of [`HookCounters`] to bump.
#[derive(Clone, Copy)]
pub enum Counter {
    Event,
    RingbufDrop,
    ReadError,
    MapFull,
    Quota,
}

/// Bumps `what` for `hook` on this CPU; returns the new count (0 without the map).
#[inline(always)]
pub fn count(hook: u32, what: Counter) -> u64 {
    let Some(c) = HOOK_COUNTERS.get_ptr_mut(hook) else {
        return 0;
    };
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    let c: &mut HookCounters = unsafe { &mut *c };
    let n = match what {
        Counter::Event => &mut c.events,
        Counter::RingbufDrop => &mut c.ringbuf_drops,
        Counter::ReadError => &mut c.read_errors,
        Counter::MapFull => &mut c.map_full,
        Counter::Quota => &mut c.quota_refused,
    };
    *n += 1;
    *n
}

/// The outcome of a hook body: `Err` carries the counter to bump.
pub type HookResult = Result<(), Counter>;

/// Counts the error of a hook body, if any. The first error of each kind for a hook on a
/// CPU is also logged through aya-log: a diagnostic line for the operator (which hook, what
/// went wrong), at most hooks x kinds x CPUs lines per load, never one per event; the
/// counters say how many followed.
#[inline(always)]
pub fn finish<C: EbpfContext>(ctx: &C, hook: u32, r: HookResult) {
    if let Err(what) = r {
        if count(hook, what) == 1 {
            first_error(ctx, hook, what);
        }
    }
}

#[inline(always)]
fn first_error<C: EbpfContext>(ctx: &C, hook: u32, what: Counter) {
    match what {
        Counter::RingbufDrop => {
            warn!(
                ctx,
                "hook {}: first ring-buffer drop on this CPU (the agent is behind)", hook
            )
        }
        Counter::ReadError => warn!(ctx, "hook {}: first kernel read error on this CPU", hook),
        Counter::MapFull => warn!(ctx, "hook {}: first full map on this CPU", hook),
        Counter::Quota => warn!(
            ctx,
            "hook {}: first quota refusal on this CPU (a followed reader is at its limit)", hook
        ),
        Counter::Event => {}
    }
}

/// Reserves a record of type `T` in the ring buffer and fills its header; a full ring buffer
/// is counted as a drop for `hook`.
#[inline(always)]
pub fn reserve<T: 'static>(
    hook: u32,
    kind: u32,
    pid: u32,
    tgid: u32,
) -> Result<RingBufEntry<T>, Counter> {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        return Err(Counter::RingbufDrop);
    };
    let hdr = entry.as_mut_ptr() as *mut EventHeader;
    // SAFETY: every event type starts with an `EventHeader` (`#[repr(C)]`).
    unsafe {
        (*hdr).kind = kind;
        (*hdr).size = core::mem::size_of::<T>() as u32;
        (*hdr).time_ns = bpf_ktime_get_boot_ns();
        (*hdr).pid = pid;
        (*hdr).tgid = tgid;
    }
    count(hook, Counter::Event);
    Ok(entry)
}

/// (thread id, thread-group id) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

/// Atomically adds `v` to a shared counter (BPF `lock xadd`).
#[inline(always)]
pub fn add(counter: &mut u64, v: u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    // SAFETY: `counter` points into a map value; the add is a single atomic instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, v) };
}

/// Takes one entry of quota `slot` (of at most `max`): `Err(Quota)` when it is used up. Two
/// racing takers may both pass at the limit: a quota, not a lock.
#[inline(always)]
pub fn quota_take(slot: u32, max: u64) -> HookResult {
    let Some(used) = QUOTAS.get_ptr_mut(slot) else {
        return Err(Counter::Quota);
    };
    // SAFETY: a map value pointer; the read may race, the add is atomic.
    unsafe {
        if *used >= max {
            return Err(Counter::Quota);
        }
        add(&mut *used, 1);
    }
    Ok(())
}

/// Gives back one entry of quota `slot` (never below zero).
#[inline(always)]
pub fn quota_give(slot: u32) {
    if let Some(used) = QUOTAS.get_ptr_mut(slot) {
        // SAFETY: a map value pointer; the add of -1 is atomic.
        unsafe {
            if *used > 0 {
                add(&mut *used, u64::MAX);
            }
        }
    }
}

/// Data waiting in the ring buffer above which the agent is woken at once. Below it, events
/// wait for the agent's next poll (every 50 ms): one wakeup per batch instead of per event.
const WAKEUP_BYTES: u64 = (clinicwatch_common::capacity::EVENTS_BYTES / 16) as u64;

/// Commits a reserved record, waking the agent only when enough data waits.
#[inline(always)]
pub fn submit<T: 'static>(entry: RingBufEntry<T>) {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// Copies `avail` bytes (at most `cap`, itself at most 1023) into a buffer of `cap` bytes in
/// pieces of constant size (512, 256, ... 1 bytes, by the bits of `avail`): 6.1's verifier
/// refuses a helper length whose lower bound it lost, and LLVM rewrites the usual clamping
/// tricks. `read(pos, size)` copies `size` bytes to offset `pos` (with `pos + size <= cap`)
/// and returns the helper's result. Returns the bytes copied and whether any piece failed.
#[inline(always)]
pub fn copy_in_pieces(avail: u64, cap: u64, mut read: impl FnMut(u64, u32) -> i64) -> (u64, bool) {
    let mut pos: u64 = 0;
    let mut failed = false;
    macro_rules! piece {
        ($b:expr) => {
            if avail & $b != 0 && pos <= cap - $b {
                failed |= read(pos, $b as u32) != 0;
                pos += $b;
            }
        };
    }
    piece!(512);
    piece!(256);
    piece!(128);
    piece!(64);
    piece!(32);
    piece!(16);
    piece!(8);
    piece!(4);
    piece!(2);
    piece!(1);
    (pos, failed)
}
