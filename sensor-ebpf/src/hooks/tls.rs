//! TLS plaintext of watched processes, from uprobes on the TLS library that the agent finds
//! in their mappings (OpenSSL's `libssl.so.3`): the first bytes of each write
//! (`SSL_write`, `SSL_write_ex`: requests) and the status line of each read that starts with
//! one (`SSL_read`, `SSL_read_ex`: responses). A uprobe fires for every process that uses the
//! library; anything not watched leaves after one map lookup.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use clinicwatch_common::{
    hook, kind, TlsReadArgs, TlsReadEvent, TlsWriteEvent, TLS_CAPTURE, TLS_STATUS_LEN,
};

use crate::{
    emit::{copy_in_pieces, current_ids, finish, reserve, submit, Counter, HookResult},
    maps::{TLS_READS, WATCHED},
};

#[uprobe]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    finish(&ctx, hook::TLS, on_write(&ctx));
    0
}

#[uprobe]
pub fn tls_read_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, hook::TLS, on_read_enter(&ctx, false));
    0
}

#[uprobe]
pub fn tls_read_ex_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, hook::TLS, on_read_enter(&ctx, true));
    0
}

#[uretprobe]
pub fn tls_read_exit(ctx: RetProbeContext) -> u32 {
    finish(&ctx, hook::TLS, on_read_exit(&ctx));
    0
}

/// `SSL_write(ssl, buf, int num)` and `SSL_write_ex(ssl, buf, size_t num, size_t *written)`:
/// the plaintext is in `buf` on entry.
#[inline(always)]
fn on_write(ctx: &ProbeContext) -> HookResult {
    let (pid, tgid) = current_ids();
    let Some(w) = WATCHED.get_ptr(tgid) else {
        return Ok(());
    };
    // SAFETY: a map value pointer from a successful lookup.
    let app = unsafe { (*w).app };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).ok_or(Counter::ReadError)?;
    // `int` for SSL_write: the upper half of the register is undefined.
    let num = ctx.arg::<u64>(2).unwrap_or(0) & 0x7fff_ffff;
    if num == 0 || buf == 0 {
        return Ok(());
    }
    let avail = if num > TLS_CAPTURE as u64 {
        TLS_CAPTURE as u64
    } else {
        num
    };
    let mut entry = reserve::<TlsWriteEvent>(hook::TLS, kind::TLS_WRITE, pid, tgid)?;
    // SAFETY: the entry is reserved for a `TlsWriteEvent`; the fields read are written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.app = app;
    ev.ssl = ssl;
    ev.len = num;
    let base = ev.data.as_mut_ptr();
    let (pos, failed) = copy_in_pieces(avail, TLS_CAPTURE as u64, |pos, size| {
        // SAFETY: `pos + size <= TLS_CAPTURE`, inside `data`; the source is user memory,
        // read with the checked helper.
        unsafe {
            bpf_probe_read_user(
                base.add(pos as usize).cast(),
                size,
                (buf + pos) as *const core::ffi::c_void,
            )
        }
    });
    ev.captured = if failed { 0 } else { pos as u32 };
    submit(entry);
    if failed {
        return Err(Counter::ReadError);
    }
    Ok(())
}

/// `SSL_read(ssl, buf, int num)` and `SSL_read_ex(ssl, buf, size_t num, size_t *readbytes)`:
/// the plaintext is in `buf` only on return, so the entry keeps where it goes.
#[inline(always)]
fn on_read_enter(ctx: &ProbeContext, ex: bool) -> HookResult {
    let (_, tgid) = current_ids();
    let Some(w) = WATCHED.get_ptr(tgid) else {
        return Ok(());
    };
    let args = TlsReadArgs {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        readbytes: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        // SAFETY: a map value pointer from a successful lookup.
        app: unsafe { (*w).app },
        _pad: 0,
    };
    if TLS_READS
        .insert(&bpf_get_current_pid_tgid(), &args, 0)
        .is_err()
    {
        return Err(Counter::MapFull);
    }
    Ok(())
}

#[inline(always)]
fn on_read_exit(ctx: &RetProbeContext) -> HookResult {
    let id = bpf_get_current_pid_tgid();
    let Some(a) = TLS_READS.get_ptr(&id) else {
        return Ok(());
    };
    // SAFETY: a map value pointer from a successful lookup.
    let a = unsafe { *a };
    let _ = TLS_READS.remove(&id);
    let ret = ctx.ret::<u64>() as i32;
    let n: u64 = if a.readbytes != 0 {
        if ret != 1 {
            return Ok(());
        }
        // SAFETY: a user pointer, read with the checked helper.
        unsafe {
            aya_ebpf::helpers::bpf_probe_read_user(a.readbytes as *const u64)
                .map_err(|_| Counter::ReadError)?
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return Ok(());
    };
    if n < 12 || a.buf == 0 {
        return Ok(());
    }
    let mut status = [0u8; TLS_STATUS_LEN];
    let captured = if n >= TLS_STATUS_LEN as u64 {
        // SAFETY: a user pointer, read with the checked helper into a local array.
        let r = unsafe {
            bpf_probe_read_user(
                status.as_mut_ptr().cast(),
                TLS_STATUS_LEN as u32,
                a.buf as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            return Err(Counter::ReadError);
        }
        TLS_STATUS_LEN as u32
    } else {
        // SAFETY: as above, 12 bytes (`HTTP/1.1 200`).
        let r = unsafe {
            bpf_probe_read_user(
                status.as_mut_ptr().cast(),
                12,
                a.buf as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            return Err(Counter::ReadError);
        }
        12
    };
    // Only responses: the rest of what the app reads (bodies) never leaves the kernel.
    if &status[..5] != b"HTTP/" {
        return Ok(());
    }
    let (pid, tgid) = current_ids();
    let mut entry = reserve::<TlsReadEvent>(hook::TLS, kind::TLS_READ, pid, tgid)?;
    // SAFETY: the entry is reserved for a `TlsReadEvent`; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.app = a.app;
    ev.captured = captured;
    ev.ssl = a.ssl;
    ev.len = n;
    ev.status = status;
    submit(entry);
    Ok(())
}
