//! Names of the maps and programs in the eBPF object. The agent looks them up by these
//! names; `sensor-user`'s object test checks that each one exists in the built object.

pub mod map {
    pub const EVENTS: &str = "EVENTS";
    pub const WATCHED: &str = "WATCHED";
    pub const WATCHED_EXES: &str = "WATCHED_EXES";
    pub const PROTECTED: &str = "PROTECTED";
    pub const FILE_STATS: &str = "FILE_STATS";
    pub const FLOWS: &str = "FLOWS";
    pub const HOOK_COUNTERS: &str = "HOOK_COUNTERS";
    pub const TLS_READS: &str = "TLS_READS";
    pub const READER_FILES: &str = "READER_FILES";
    pub const QUOTAS: &str = "QUOTAS";
    pub const ALL: [&str; 10] = [
        EVENTS,
        WATCHED,
        WATCHED_EXES,
        PROTECTED,
        FILE_STATS,
        FLOWS,
        HOOK_COUNTERS,
        TLS_READS,
        READER_FILES,
        QUOTAS,
    ];
}

/// Load-time globals (`EbpfLoader::override_global`).
pub mod global {
    pub const OFFSETS: &str = "OFFSETS";
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// Non-zero when the `PROTECTED` map holds entries (skips the ancestor walk otherwise).
    pub const PROTECT_ENABLED: &str = "PROTECT_ENABLED";
}

pub mod prog {
    pub const TP_BTF_EXEC: &str = "tp_btf_exec";
    pub const TP_BTF_FORK: &str = "tp_btf_fork";
    pub const TP_BTF_EXIT: &str = "tp_btf_exit";
    pub const RAW_TP_EXEC: &str = "raw_tp_exec";
    pub const RAW_TP_FORK: &str = "raw_tp_fork";
    pub const RAW_TP_EXIT: &str = "raw_tp_exit";
    pub const LSM_FILE_OPEN: &str = "lsm_file_open";
    pub const TP_OPEN_EXIT: &str = "tp_open_exit";
    pub const FEXIT_VFS_READ: &str = "fexit_vfs_read";
    pub const FEXIT_VFS_READV: &str = "fexit_vfs_readv";
    pub const TP_READ_EXIT: &str = "tp_read_exit";
    pub const LSM_MMAP_FILE: &str = "lsm_mmap_file";
    pub const TP_MMAP_ENTER: &str = "tp_mmap_enter";
    pub const CG_CONNECT4: &str = "cg_connect4";
    pub const CG_CONNECT6: &str = "cg_connect6";
    pub const CG_SKB_EGRESS: &str = "cg_skb_egress";
    pub const CG_SKB_INGRESS: &str = "cg_skb_ingress";
    pub const CG_SOCK_RELEASE: &str = "cg_sock_release";
    /// Uprobes on the TLS library, attached per library found in a watched process's
    /// mappings (not in the hook table).
    pub const TLS_WRITE: &str = "tls_write";
    pub const TLS_READ_ENTER: &str = "tls_read_enter";
    pub const TLS_READ_EX_ENTER: &str = "tls_read_ex_enter";
    pub const TLS_READ_EXIT: &str = "tls_read_exit";
    /// Empty program for benchmark floors (not in the hook table).
    pub const TP_NOOP: &str = "tp_noop";
    pub const ALL: [&str; 23] = [
        TP_BTF_EXEC,
        TP_BTF_FORK,
        TP_BTF_EXIT,
        RAW_TP_EXEC,
        RAW_TP_FORK,
        RAW_TP_EXIT,
        LSM_FILE_OPEN,
        TP_OPEN_EXIT,
        FEXIT_VFS_READ,
        FEXIT_VFS_READV,
        TP_READ_EXIT,
        LSM_MMAP_FILE,
        TP_MMAP_ENTER,
        CG_CONNECT4,
        CG_CONNECT6,
        CG_SKB_EGRESS,
        CG_SKB_INGRESS,
        CG_SOCK_RELEASE,
        TLS_WRITE,
        TLS_READ_ENTER,
        TLS_READ_EX_ENTER,
        TLS_READ_EXIT,
        TP_NOOP,
    ];
}
