/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Shared definitions of the outbound capture programs (connect4, sockops, getsockopt, getpeername4) and of the
 * opt-in sk_msg fast path (fastpath.c).
 *
 * Every struct here is shared with Go through bpf2go -type; never copy a layout by hand on the Go side.
 * Every map is defined here once; each hook's object carries the same definitions and the loader makes the
 * five objects share one instance of each map (MapReplacements), so "one file per hook" costs nothing at run time.
 *
 * Settings are runtime data, not -D permutations:
 *   - mc_config is keyed by a netns cookie. Key 0 means "any netns": per-pod mode (one attach per pod cgroup,
 *     with its own maps) writes key 0 only; node-agent mode (one attach at a root cgroup) writes one key per pod
 *     netns. A program looks up its netns cookie first and falls back to 0; the key it found ("the config key")
 *     is then used for every list lookup, so one pod never sees another pod's lists.
 *   - CIDR lists are LPM tries whose key prefix starts with the 64-bit config key, so one trie serves every pod.
 *   - Port sets are hash maps keyed by (config key, port, kind).
 */
#ifndef MESHCAP_H
#define MESHCAP_H

#include "common.h"

/* sock_addr programs: 1 lets the syscall proceed (possibly rewritten). */
#define SYS_PROCEED 1

/* Sizes of the fixed uid/gid arrays in struct mc_config (istio allows lists; real pods use one or two). */
#define MC_MAX_IDS 8

/* Default capacities; the loader sizes them before loading (MC_MAX_CONNS from --max-connections). */
#define MC_MAX_POLICIES 1024
#define MC_MAX_LIST_ENTRIES 16384
#define MC_MAX_CONNS 65536

/* mc_config.flags */
enum mc_config_flags {
	MC_F_OUTBOUND_ALL = 1 << 0,      /* -i '*' */
	MC_F_LOOPBACK_INCLUDED = 1 << 1, /* an -i CIDR is loopback: 127/8 is not exempt as a whole (istio drops the
	                                  * "-o lo ! --uid-owner RETURN" rules then) */
	MC_F_FAST_PATH = 1 << 2,         /* opt-in (ebpf attach --fast-path): both ends of a captured app<->proxy
	                                  * connection go into mc_sockhash and mc_fastpath redirects their data (see
	                                  * fastpath.c). Only for proxies that read with read()/recvmsg(), not splice. */
	MC_F_IPV6 = 1 << 3,              /* the pod has IPv6 enabled (istio's rule: it then writes ip6tables rules):
	                                  * connect6 captures native IPv6 destinations to [::1]:proxy_port. Without it
	                                  * native IPv6 is left alone, as istio does. IPv4-mapped ones are IPv4. */
	MC_F_GROUPS_INCLUDE = 1 << 4,    /* rule 13, an ISTIO_OUTBOUND_OWNER_GROUPS list: only owners whose gid is in
	                                  * mc_groups under the config key go on; the rest return */
	MC_F_GROUPS_EXCLUDE = 1 << 5,    /* rule 13, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE (include "*"): owners whose gid
	                                  * is in mc_groups return */
};

/* Per-netns (or, for key 0, per-attach) outbound settings. Ports in host byte order, addresses in network order. */
struct mc_config {
	__u16 proxy_port;   /* -p: where captured connections go (127.x.y.z:proxy_port, see mc_proxy_addr4) */
	__u16 inbound_port; /* -z: where the proxy owner's own connections over lo go (rule 11a, ISTIO_IN_REDIRECT) */
	__u16 tunnel_port;  /* -e: never sent to inbound_port by rule 11a */
	__u8 flags;         /* enum mc_config_flags */
	__u8 n_uids;
	__u8 n_gids;
	__u8 _pad[3];
	__u32 loopback_addr; /* ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR address, masked */
	__u32 loopback_mask; /* ... and its mask */
	__u32 uids[MC_MAX_IDS]; /* -u: exempt owners; first n_uids are valid */
	__u32 gids[MC_MAX_IDS]; /* -g: exempt groups; first n_gids are valid */
	__u32 max_conns;        /* --max-connections: captured client sockets of this key at once; more are refused */
	__u32 _pad2;
};

/* LPM key: the 64-bit config key is part of the prefix, so prefixlen = 64 + CIDR bits. The key is stored as two
 * u32 halves (hi, lo) so that the struct has no padding; only byte equality matters to the trie. */
struct mc_lpm_key {
	__u32 prefixlen;
	__u32 cfg_hi;
	__u32 cfg_lo;
	__u32 addr; /* network byte order */
};

/* LPM key of the IPv6 tries (mc_cidr6_*): the same layout with a 128-bit address, prefixlen = 64 + CIDR bits. */
struct mc_lpm6_key {
	__u32 prefixlen;
	__u32 cfg_hi;
	__u32 cfg_lo;
	__u32 addr[4]; /* network byte order */
};

/* mc_ports kinds */
enum mc_port_kind {
	MC_PORT_OUT_EXCLUDE = 1, /* -o */
	MC_PORT_OUT_INCLUDE = 2, /* -q */
};

struct mc_port_key {
	__u64 cfg; /* config key: netns cookie or 0 */
	__u16 port; /* host byte order */
	__u8 kind;  /* enum mc_port_kind */
	__u8 _pad[5];
};

/* mc_orig.flags */
enum mc_orig_flags {
	MC_ORIG_F_FAST_PATH = 1 << 0,   /* the netns has MC_F_FAST_PATH: sockops tries to put both ends in mc_sockhash */
	MC_ORIG_F_APP_IN = 1 << 1,      /* the app (client) end is in mc_sockhash */
	MC_ORIG_F_PROXY_IN = 1 << 2,    /* the proxy (accepted) end is in mc_sockhash */
	MC_ORIG_F_PROXY_OWNED = 1 << 3, /* mc_orig_tuple: the proxy's accepted socket exists and frees the entry */
};

/* Original destination of a captured connection. */
struct mc_orig {
	__u32 addr;  /* network byte order */
	__u16 port;  /* host byte order */
	__u16 flags; /* enum mc_orig_flags */
	__u32 _pad;
	__u64 cfg;   /* config key: the mc_stats entry this connection is counted in */
};

/* mc_client.flags */
enum mc_client_flags {
	MC_CL_F_COUNTED = 1 << 0, /* holds one slot of mc_stats.conns (released by cgroup/sock_release) */
	MC_CL_F_IPV6 = 1 << 1,    /* the destination is native IPv6: its address is in mc_dst6 (orig.addr is 0) */
};

/* Socket storage of a captured client socket (mc_client): written by connect4, read by sockops and getpeername4,
 * freed by the kernel with the socket; its slot in mc_stats.conns is given back when the socket is released. */
struct mc_client {
	struct mc_orig orig;
	__u64 netns; /* netns cookie, recorded by connect4 (bpf_get_netns_cookie exists for sock_addr on every kernel) */
	__u32 flags; /* enum mc_client_flags */
	__u32 _pad;
};

/* Per config key (pod) counters: struct mc_stats in mc_stats. conns and tuples are gauges guarded by lock (the
 * capacity check and the increment are one step, with no atomic fetch needed); the rest are counters. */
struct mc_stats {
	struct bpf_spin_lock lock;
	__u32 _pad;
	__s64 conns;            /* captured client sockets not yet released: entries in use */
	__s64 tuples;           /* mc_orig_tuple entries of this key in use */
	__u64 captured;         /* connects sent to the proxy */
	__u64 exempt_port;      /* -o */
	__u64 exempt_owner;     /* -u / -g */
	__u64 exempt_loopback;  /* 127/8 or the loopback CIDR */
	__u64 exempt_cidr;      /* -x */
	__u64 not_included;     /* neither -q nor -i */
	__u64 refused_full;     /* refused at connect: max_conns reached (or no storage) */
	__u64 tuple_lost;       /* proxy-side entry could not be written (node-wide table full) */
};

/*
 * Key of mc_orig_tuple, written from the PROXY's point of view so that the proxy's accepted socket finds it
 * directly: local = the proxy listener address the client was sent to (127.x.y.z:proxy_port, see mc_proxy_addr4),
 * remote = the client's own source address. netns = the netns cookie both sockets share (the client and the
 * proxy of a pod live in one netns). Without the cookie, (127.0.0.1, port) keys would collide across pods.
 */
struct mc_tuple {
	__u64 netns;
	__u32 local_addr;  /* network byte order */
	__u32 remote_addr; /* network byte order */
	__u16 local_port;  /* host byte order */
	__u16 remote_port; /* host byte order */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_MAX_POLICIES);
	__type(key, __u64);
	__type(value, struct mc_config);
} mc_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_lpm_key);
	__type(value, __u8);
} mc_cidr_excl SEC(".maps"); /* -x */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_lpm_key);
	__type(value, __u8);
} mc_cidr_incl SEC(".maps"); /* -i */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__type(key, struct mc_port_key);
	__type(value, __u8);
} mc_ports SEC(".maps"); /* -o, -q */

/* Captured client sockets (struct mc_client): socket-local, so nothing is ever evicted and nothing outlives its
 * socket, whatever the path (close, reset, a failed connect). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_client);
} mc_client SEC(".maps");

/* Key of mc_groups: istio's owner group list of one config key (rule 13), as numeric gids (names resolved by the
 * loader's caller, as iptables resolves them when it applies the rules). A map, not an array in mc_config, so that
 * mc_config keeps the layout pinned attachments hold; MC_F_GROUPS_* in mc_config.flags says how it is read. */
struct mc_group_key {
	__u64 cfg; /* config key: netns cookie or 0 */
	__u32 gid;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_group_key);
	__type(value, __u8);
} mc_groups SEC(".maps"); /* ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE */

/* Proxy-side 4-tuple + netns -> original destination. Written by sockops when the client is established, read by
 * getsockopt(SO_ORIGINAL_DST) and by the Go OrigDst helper. Freed when the proxy's accepted socket closes, or when
 * the client closes before the proxy ever had a socket for it. Not LRU: a live entry is never evicted; memory grows
 * with live entries only (no preallocation). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MC_MAX_CONNS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_tuple);
	__type(value, struct mc_orig);
} mc_orig_tuple SEC(".maps");

/* The IPv6 original destination of a captured client socket (MC_CL_F_IPV6 in its mc_client): socket storage beside
 * mc_client, whose layout pinned attachments already hold. */
struct mc_dst6 {
	__u32 addr[4]; /* network byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_dst6);
} mc_dst6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_lpm6_key);
	__type(value, __u8);
} mc_cidr6_excl SEC(".maps"); /* -x, IPv6 CIDRs */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_lpm6_key);
	__type(value, __u8);
} mc_cidr6_incl SEC(".maps"); /* -i, IPv6 CIDRs */

/* The IPv6 twin of mc_tuple: key of mc_orig_tuple6, from the proxy's point of view ([::1]:proxy_port, client). */
struct mc_tuple6 {
	__u64 netns;
	__u32 local_addr[4];  /* network byte order */
	__u32 remote_addr[4]; /* network byte order */
	__u16 local_port;     /* host byte order */
	__u16 remote_port;    /* host byte order */
	__u32 _pad;
};

/* Original IPv6 destination of a captured connection (the IPv6 twin of struct mc_orig). */
struct mc_orig6 {
	__u32 addr[4]; /* network byte order */
	__u16 port;    /* host byte order */
	__u16 flags;   /* enum mc_orig_flags (MC_ORIG_F_PROXY_OWNED only: no fast path for IPv6) */
	__u32 _pad;
	__u64 cfg;
};

/* mc_orig_tuple for native IPv6 connections: same life cycle (written at the client's ESTABLISHED, owned and freed
 * by the proxy's accepted socket, or by the client when no proxy socket ever owned it). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MC_MAX_CONNS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_tuple6);
	__type(value, struct mc_orig6);
} mc_orig_tuple6 SEC(".maps");

/* Key of mc_local: an address of the pod's network namespace (IPv4 as ::ffff:a.b.c.d), under a config key. */
struct mc_local_key {
	__u64 cfg;     /* config key: netns cookie or 0 */
	__u32 addr[4]; /* network byte order */
};

/* The pod's own addresses (Policy.LocalAddrs, read from its netns by the front end), so that connect4/connect6 know
 * which destinations the kernel routes over lo: istio's "-o lo" rules (DEFAULTS.md section 5 rules 10, 11a, 11b)
 * match them, and a sock_addr program sees the address, never the route. 127/8 and ::1 need no entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mc_local_key);
	__type(value, __u8);
} mc_local SEC(".maps");

/* Per config key counters (struct mc_stats), created by the loader with the settings (and by connect4 if missing). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_MAX_POLICIES);
	__type(key, __u64);
	__type(value, struct mc_stats);
} mc_stats SEC(".maps");

/*
 * Fast path (MC_F_FAST_PATH). Each end of a captured app<->proxy connection is keyed by its OWN view of the
 * 4-tuple (local = itself); the sk_msg program finds the peer under the reversed tuple. Entries leave the
 * sockhash when their socket closes (the kernel unlinks it). Twice MC_MAX_CONNS: two sockets per connection.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * MC_MAX_CONNS);
	__type(key, struct mc_tuple);
	__type(value, __u64);
} mc_sockhash SEC(".maps");

/* Fast-path counters (per CPU), indexes of enum mc_fp_stat. Read by tests and `meshcap status`. */
enum mc_fp_stat {
	MC_FP_REDIRECT_MSGS = 0,  /* messages redirected into the peer's ingress queue */
	MC_FP_REDIRECT_BYTES = 1, /* their bytes */
	MC_FP_PASS_MSGS = 2,      /* messages that went through TCP (peer absent, or the connection started on TCP) */
	MC_FP_STATS = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MC_FP_STATS);
	__type(key, __u32);
	__type(value, __u64);
} mc_fp_stats SEC(".maps");

/*
 * Per-socket decision of the sk_msg program, taken at a socket's first message and never changed, so that the
 * bytes of one direction never take two paths (the receiver reads its redirect queue before its TCP queue: data
 * redirected after data sent by TCP and not yet read would overtake it). Freed with the socket.
 */
enum mc_fp_mode {
	MC_FP_UNDECIDED = 0,
	MC_FP_REDIRECT = 1,
	MC_FP_TCP = 2,
};

/* Socket storage of a socket in mc_sockhash: the key of its peer and its decision. Created by sockops before the
 * socket goes into the map; a socket without it is never redirected. */
struct mc_fp_peer {
	struct mc_tuple peer;
	__u32 mode; /* enum mc_fp_mode */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_fp_peer);
} mc_fp_peer SEC(".maps");

/* Meshcap-private answer of getsockopt(SOL_IP, SO_ORIGINAL_DST): a proxy that passes optlen >= sizeof(struct
 * mc_origdst_ext) gets this struct (optlen = its size) when the program answers. Netfilter's own answer (iptables
 * mode) writes only the sockaddr_in and leaves the rest of the buffer as the caller set it (zero), so the same
 * call tells a proxy whether its accepted socket is on the fast path, without another syscall and without bpf(). */
#define MC_ORIGDST_F_FAST_PATH 1 /* the accepted socket is in mc_sockhash: read it with read(), never splice */

/* What a caller with a large enough buffer gets for a fast-path socket from getsockopt(SO_ORIGINAL_DST). The Go
 * side reads it through the type bpf2go generates from getsockopt's BTF (loader.OrigDstExt). */
struct mc_origdst_ext {
	struct mc_sockaddr_in sa;
	__u32 flags; /* MC_ORIGDST_F_* */
};

/* Meshcap-private getsockopt(SOL_IP, MC_SO_CAPTURE_STATS) on any socket of a captured pod: answered by the
 * cgroup/getsockopt program with the pod's counters, so that its sidecar, unprivileged (no bpf()), can export them.
 * The number is far from every IP_* option; the kernel itself answers ENOPROTOOPT for it. */
#define MC_SO_CAPTURE_STATS 0x4d43

/* The answer: struct mc_stats without its lock. */
struct mc_stats_answer {
	__s64 conns;
	__s64 tuples;
	__u64 captured;
	__u64 exempt_port;
	__u64 exempt_owner;
	__u64 exempt_loopback;
	__u64 exempt_cidr;
	__u64 not_included;
	__u64 refused_full;
	__u64 tuple_lost;
	__u32 max_conns;
	__u32 _pad;
};

/*
 * A socket's netns cookie where the program type has no bpf_get_netns_cookie (sock_ops and cgroup_sockopt before
 * Linux 5.15). cgroup/sock_create (sockcreate.c) records it for every socket the cgroup creates; BPF_F_CLONE
 * copies it into the sockets a listener accepts, which are never "created". Empty for sockets created before the
 * attachment (but sockops.c's mc_record_netns_btf fills in proxy sockets): 0 then, never used as a netns key.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, __u64);
} mc_sk_netns SEC(".maps");

/* Where sockops and getsockopt read a socket's netns cookie; the loader sets it before load from the probe
 * (loader.NetnsSource): 0 = bpf_get_netns_cookie (Linux 5.15+), 1 = mc_sk_netns (Linux 5.10 to 5.14). The
 * verifier drops the branch not taken, so a helper the kernel lacks there is never checked. */
volatile const __u32 mc_netns_from_storage = 0;

/* The cookie sock_create recorded for sk; 0 when there is none. */
static __always_inline __u64 mc_stored_netns(struct bpf_sock *sk)
{
	if (!sk)
		return 0;
	__u64 *cookie = bpf_sk_storage_get(&mc_sk_netns, sk, 0, 0);
	return cookie ? *cookie : 0;
}

/* Find the settings that apply to a socket in netns `netns`: its own, else the "any netns" key 0.
 * Sets *cfg_key to the key found, which scopes every list lookup. */
static __always_inline struct mc_config *mc_lookup_config(__u64 netns, __u64 *cfg_key)
{
	struct mc_config *cfg;

	if (netns) {
		cfg = bpf_map_lookup_elem(&mc_config, &netns);
		if (cfg) {
			*cfg_key = netns;
			return cfg;
		}
	}
	__u64 any = 0;
	*cfg_key = 0;
	return bpf_map_lookup_elem(&mc_config, &any);
}

/* The counters of config key cfg_key, created when missing (an attachment upgraded before its settings were
 * rewritten). NULL only when the map is full. */
static __always_inline struct mc_stats *mc_stats_of(__u64 cfg_key)
{
	struct mc_stats *st = bpf_map_lookup_elem(&mc_stats, &cfg_key);
	if (st)
		return st;
	struct mc_stats zero = {};
	bpf_map_update_elem(&mc_stats, &cfg_key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&mc_stats, &cfg_key);
}

static __always_inline void mc_count(__u64 *counter)
{
	__sync_fetch_and_add(counter, 1);
}

/* Add delta to a gauge of st under its lock. */
static __always_inline void mc_gauge_add(struct mc_stats *st, __s64 *gauge, __s64 delta)
{
	bpf_spin_lock(&st->lock);
	*gauge += delta;
	bpf_spin_unlock(&st->lock);
}

static __always_inline void mc_fill_tuple(struct mc_tuple *t, __u64 netns, __u32 local_addr, __u16 local_port,
                                          __u32 remote_addr, __u16 remote_port)
{
	__builtin_memset(t, 0, sizeof(*t)); /* padding is part of the hash key */
	t->netns = netns;
	t->local_addr = local_addr;
	t->local_port = local_port;
	t->remote_addr = remote_addr;
	t->remote_port = remote_port;
}

/* The record of a client socket connect4/connect6 captured (holding its slot), or NULL: what getpeername restores. */
static __always_inline struct mc_client *mc_captured_client(struct bpf_sock *sk)
{
	if (!sk)
		return NULL;
	struct mc_client *cl = bpf_sk_storage_get(&mc_client, sk, 0, 0);
	return cl && (cl->flags & MC_CL_F_COUNTED) ? cl : NULL;
}

/* ::ffff:0:0/96 (words of an IPv6 address, network order): an AF_INET6 socket whose peer is IPv4-mapped talks IPv4
 * on the wire, and the kernel keeps its IPv4 addresses where AF_INET sockets have them (skc_daddr, skc_rcv_saddr). */
static __always_inline int mc_is_v4mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
}

#endif /* MESHCAP_H */
