//! Network activity of watched processes, from cgroup hooks on the cgroup v2 root (these run
//! only for sockets, not on every syscall):
//! - `cgroup/connect4`, `cgroup/connect6` (4.17+): the connect, its destination, and the
//!   socket cookie that names the flow from then on.
//! - `cgroup_skb/egress`, `cgroup_skb/ingress` (4.10+): payload bytes per flow, counted only
//!   for cookies registered at connect (TCP by sequence number, so a retransmission is not
//!   counted twice); on a UDP flow to port 53, each query's and answer's payload
//!   (up to 512 bytes) goes to userspace, which reads the names in the answers to the
//!   questions asked.
//! - `cgroup/sock_release` (5.9+): the flow's close, with its final counters.

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_load_bytes},
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext, SockContext},
    EbpfContext,
};
use clinicwatch_common::{
    hook, kind, quota, ConnectEvent, DnsEvent, FlowAddr, FlowCloseEvent, FlowStats, TcpFlags,
    DNS_LEN, READER_APP,
};

use crate::{
    emit::{
        add, copy_in_pieces, current_ids, finish, quota_give, quota_take, reserve, submit, Counter,
        HookResult,
    },
    maps::{FLOWS, WATCHED},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[cgroup_sock_addr(connect4)]
pub fn cg_connect4(ctx: SockAddrContext) -> i32 {
    finish(&ctx, hook::NET_CONNECT, on_connect(&ctx, AF_INET));
    1
}

#[cgroup_sock_addr(connect6)]
pub fn cg_connect6(ctx: SockAddrContext) -> i32 {
    finish(&ctx, hook::NET_CONNECT, on_connect(&ctx, AF_INET6));
    1
}

#[cgroup_skb]
pub fn cg_skb_egress(ctx: SkBuffContext) -> i32 {
    finish(&ctx, hook::NET_BYTES, on_packet(&ctx, true));
    1
}

#[cgroup_skb]
pub fn cg_skb_ingress(ctx: SkBuffContext) -> i32 {
    finish(&ctx, hook::NET_BYTES, on_packet(&ctx, false));
    1
}

#[cgroup_sock(sock_release)]
pub fn cg_sock_release(ctx: SockContext) -> i32 {
    finish(&ctx, hook::NET_CLOSE, on_release(&ctx));
    1
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u16) -> HookResult {
    let (pid, tgid) = current_ids();
    let Some(w) = WATCHED.get_ptr(tgid) else {
        return Ok(());
    };
    // SAFETY: a map value pointer from a successful lookup.
    let app = unsafe { (*w).app };
    // SAFETY: the context pointer is valid for the program's lifetime.
    let sa = unsafe { &*ctx.sock_addr };
    let mut remote = FlowAddr {
        family,
        protocol: sa.protocol as u16,
        port: u16::from_be(sa.user_port as u16),
        _pad: 0,
        addr: [0; 16],
    };
    if family == AF_INET {
        let a = sa.user_ip4.to_ne_bytes();
        remote.addr[..4].copy_from_slice(&a);
    } else {
        let words = sa.user_ip6;
        for (i, w) in words.iter().enumerate() {
            remote.addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
    }
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let stats = FlowStats {
        tgid,
        app,
        remote,
        ..FlowStats::default()
    };
    // A protected reader's flows are held within its quota (a connect again on the same
    // socket takes no more), so that its sockets cannot evict the watched apps' counters.
    let reader = app == READER_APP && FLOWS.get_ptr(cookie).is_none();
    if reader {
        quota_take(quota::FLOWS, quota::MAX_FLOWS)?;
    }
    if FLOWS.insert(cookie, stats, 0).is_err() {
        if reader {
            quota_give(quota::FLOWS);
        }
        return Err(Counter::MapFull);
    }
    let mut entry = reserve::<ConnectEvent>(hook::NET_CONNECT, kind::NET_CONNECT, pid, tgid)?;
    // SAFETY: the entry is reserved for a `ConnectEvent`; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.app = app;
    ev._pad = 0;
    ev.cookie = cookie;
    ev.remote = remote;
    submit(entry);
    Ok(())
}

/// IPv6 extension headers skipped before the transport header: hop-by-hop (used by BIG TCP's
/// jumbo option), routing, fragment, destination options.
const IPV6_EXT_HEADERS: [u8; 4] = [0, 43, 44, 60];
const MAX_IPV6_EXT: usize = 4;

/// Where a packet's transport header and payload are.
struct Packet {
    /// IP protocol of the transport header (after IPv6 extension headers).
    proto: u8,
    /// Offset of the transport header.
    l4: u64,
    /// Offset and length of the transport payload.
    off: u64,
    len: u64,
}

/// Transport payload of the packet (IP, IPv6 extension and TCP/UDP headers excluded).
#[inline(always)]
fn payload(ctx: &SkBuffContext) -> Result<Packet, Counter> {
    let len = ctx.len() as u64;
    let load = |off: u64| ctx.load::<u8>(off as usize).map_err(|_| Counter::ReadError);
    let b0 = load(0)?;
    let (mut l3, mut proto) = match b0 >> 4 {
        4 => ((b0 & 0x0f) as u64 * 4, load(9)?),
        6 => (40u64, load(6)?),
        _ => {
            return Ok(Packet {
                proto: 0,
                l4: 0,
                off: 0,
                len: 0,
            })
        }
    };
    if b0 >> 4 == 6 {
        for _ in 0..MAX_IPV6_EXT {
            if !IPV6_EXT_HEADERS.contains(&proto) {
                break;
            }
            let next = load(l3)?;
            let ext_len = if proto == 44 {
                8
            } else {
                (load(l3 + 1)? as u64 + 1) * 8
            };
            proto = next;
            l3 += ext_len;
        }
    }
    let l4 = match proto {
        IPPROTO_TCP => (load(l3 + 12)? >> 4) as u64 * 4,
        IPPROTO_UDP => 8,
        _ => 0,
    };
    Ok(Packet {
        proto,
        l4: l3,
        off: l3 + l4,
        len: len.saturating_sub(l3 + l4),
    })
}

/// Counts a TCP segment by sequence number (see [`FlowStats::count_segment`]).
///
/// # Safety
/// `s` is a map value pointer from a successful lookup.
#[inline(always)]
unsafe fn count_tcp(
    ctx: &SkBuffContext,
    s: *mut FlowStats,
    p: &Packet,
    egress: bool,
) -> HookResult {
    let seq = u32::from_be(
        ctx.load::<u32>((p.l4 + 4) as usize)
            .map_err(|_| Counter::ReadError)?,
    );
    let flags = ctx
        .load::<u8>((p.l4 + 13) as usize)
        .map_err(|_| Counter::ReadError)?;
    // SAFETY: the caller's pointer. Not atomic: segments of one direction of a flow are
    // nearly always handled one at a time (socket lock on egress, the flow's receive CPU on
    // ingress); a rare race could miscount one segment, never corrupt the map.
    unsafe { (*s).count_segment(egress, seq, TcpFlags::from_byte(flags), p.len as u32) };
    Ok(())
}

const DNS_PORT: u16 = 53;

/// Sends a DNS message's payload (a query sent or an answer received) to userspace (copied in pieces of constant size, see
/// [`copy_in_pieces`]).
#[inline(always)]
fn capture_dns(
    ctx: &SkBuffContext,
    cookie: u64,
    tgid: u32,
    off: u64,
    len: u64,
    kind: u32,
) -> HookResult {
    if len == 0 || off > 0xffff {
        return Ok(());
    }
    let avail = if len > DNS_LEN as u64 {
        DNS_LEN as u64
    } else {
        len
    };
    let mut entry = reserve::<DnsEvent>(hook::NET_BYTES, kind, tgid, tgid)?;
    // SAFETY: the entry is reserved for a `DnsEvent`; the fields read are written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.cookie = cookie;
    ev._pad = 0;
    let base = ev.data.as_mut_ptr();
    let (pos, failed) = copy_in_pieces(avail, DNS_LEN as u64, |pos, size| {
        // SAFETY: `pos + size <= DNS_LEN`, inside `data`; the helper accepts this program
        // type's context.
        unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                (off + pos) as u32,
                base.add(pos as usize).cast(),
                size,
            )
        }
    });
    ev.len = if failed { 0 } else { pos as u32 };
    submit(entry);
    Ok(())
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, egress: bool) -> HookResult {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(s) = FLOWS.get_ptr_mut(cookie) else {
        return Ok(());
    };
    let p = payload(ctx)?;
    if p.proto == IPPROTO_TCP {
        // SAFETY: a map value pointer from a successful lookup.
        unsafe { count_tcp(ctx, s, &p, egress)? };
    }
    // SAFETY: a map value pointer; the adds are atomic.
    unsafe {
        if egress {
            if p.proto != IPPROTO_TCP {
                add(&mut (*s).bytes_sent, p.len);
            }
            add(&mut (*s).packets_sent, 1);
        } else {
            if p.proto != IPPROTO_TCP {
                add(&mut (*s).bytes_recv, p.len);
            }
            add(&mut (*s).packets_recv, 1);
        }
    }
    // SAFETY: a map value pointer from a successful lookup.
    let (remote, tgid) = unsafe { ((*s).remote, (*s).tgid) };
    if remote.protocol == IPPROTO_UDP as u16 && remote.port == DNS_PORT {
        // Queries too: an answer is believed only for a question its flow asked.
        let kind = if egress {
            kind::DNS_QUERY
        } else {
            kind::DNS_ANSWER
        };
        capture_dns(ctx, cookie, tgid, p.off, p.len, kind)?;
    }
    Ok(())
}

#[inline(always)]
fn on_release(ctx: &SockContext) -> HookResult {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(s) = FLOWS.get_ptr(cookie) else {
        return Ok(());
    };
    // SAFETY: a map value pointer from a successful lookup.
    let stats = unsafe { *s };
    if FLOWS.remove(cookie).is_ok() && stats.app == READER_APP {
        quota_give(quota::FLOWS);
    }
    let mut entry =
        reserve::<FlowCloseEvent>(hook::NET_CLOSE, kind::NET_CLOSE, stats.tgid, stats.tgid)?;
    // SAFETY: the entry is reserved for a `FlowCloseEvent`; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.cookie = cookie;
    ev.stats = stats;
    submit(entry);
    Ok(())
}
