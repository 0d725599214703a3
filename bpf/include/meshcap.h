/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Shared definitions of the outbound capture programs (connect4, sockops, getsockopt, getpeername4).
 *
 * Every struct here is shared with Go through bpf2go -type; never copy a layout by hand on the Go side.
 * Every map is defined here once; each hook's object carries the same definitions and the loader makes the
 * four objects share one instance of each map (MapReplacements), so "one file per hook" costs nothing at run time.
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

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif
/* netfilter's SO_ORIGINAL_DST (linux/netfilter_ipv4.h), what every transparent proxy asks. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef TCP_CLOSE
#define TCP_CLOSE 7
#endif

/* sock_addr programs: 1 lets the syscall proceed (possibly rewritten). */
#define SYS_PROCEED 1

/* Sizes of the fixed uid/gid arrays in struct mc_config (istio allows lists; real pods use one or two). */
#define MC_MAX_IDS 8

/* Default capacities; the loader may raise them (node-agent mode) before loading. */
#define MC_MAX_POLICIES 1024
#define MC_MAX_LIST_ENTRIES 16384
#define MC_MAX_CONNS 16384

/* mc_config.flags */
enum mc_config_flags {
	MC_F_OUTBOUND_ALL = 1 << 0,      /* -i '*' */
	MC_F_LOOPBACK_INCLUDED = 1 << 1, /* an -i CIDR is loopback: 127/8 is not exempt as a whole (istio drops the
	                                  * "-o lo ! --uid-owner RETURN" rules then) */
};

/* Per-netns (or, for key 0, per-attach) outbound settings. Ports in host byte order, addresses in network order. */
struct mc_config {
	__u16 proxy_port;   /* -p: where captured connections go (127.0.0.1:proxy_port) */
	__u16 inbound_port; /* -z: kept for the inbound side and status; not used by outbound programs */
	__u16 tunnel_port;  /* -e */
	__u8 flags;         /* enum mc_config_flags */
	__u8 n_uids;
	__u8 n_gids;
	__u8 _pad[3];
	__u32 loopback_addr; /* ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR address, masked */
	__u32 loopback_mask; /* ... and its mask */
	__u32 uids[MC_MAX_IDS]; /* -u: exempt owners; first n_uids are valid */
	__u32 gids[MC_MAX_IDS]; /* -g: exempt groups; first n_gids are valid */
};

/* LPM key: the 64-bit config key is part of the prefix, so prefixlen = 64 + CIDR bits. The key is stored as two
 * u32 halves (hi, lo) so that the struct has no padding; only byte equality matters to the trie. */
struct mc_lpm_key {
	__u32 prefixlen;
	__u32 cfg_hi;
	__u32 cfg_lo;
	__u32 addr; /* network byte order */
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

/* Original destination of a captured connection. */
struct mc_orig {
	__u32 addr; /* network byte order */
	__u16 port; /* host byte order */
	__u16 _pad;
};

/*
 * Key of mc_orig_tuple, written from the PROXY's point of view so that the proxy's accepted socket finds it
 * directly: local = the proxy listener address the client was sent to (127.0.0.1:proxy_port),
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

/* Socket cookie of a captured client socket -> original destination. Written by connect4, read by sockops and
 * getpeername4, deleted when the client socket closes. LRU so that it stays bounded even if a close is missed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MC_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct mc_orig);
} mc_orig_cookie SEC(".maps");

/* Proxy-side 4-tuple + netns -> original destination. Written by sockops when the client is established, read by
 * getsockopt(SO_ORIGINAL_DST) and by the Go OrigDst helper, deleted when the proxy's accepted socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MC_MAX_CONNS);
	__type(key, struct mc_tuple);
	__type(value, struct mc_orig);
} mc_orig_tuple SEC(".maps");

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

#endif /* MESHCAP_H */
