/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Definitions of the inbound capture programs, shared with Go through bpf2go -type:
 *   sk_lookup.c          steers captured SYNs to the sidecar's listener (netns hook)
 *   inbound_bind.c       cgroup/post_bind4+6: marks a socket the exempt proxy uid/gid bound to the capture port
 *   inbound_sockops.c    sockops: a marked socket that starts listening goes into inb_listener (no registration
 *                        by the sidecar needed); forgets steered connections when they close
 *   inbound_getsockopt.c cgroup/getsockopt: SO_ORIGINAL_DST on a steered connection = its local address
 *
 * The inbound side is per network namespace: one set of objects per pod netns, each with its own maps
 * (pinned under <pin root>/netns-<cookie>/inbound/). Every map is defined here once; each object carries the
 * definitions and the loader makes the objects of one netns share one instance (MapReplacements). Nothing here is
 * shared with the outbound objects (meshcap.h), so the two halves can be attached, replaced and detached
 * independently.
 *
 * Settings are runtime data, not -D permutations: inb_config holds the single-valued settings, inb_ports the
 * per-port verdicts, inb_listener the sidecar's listening socket (see docs/inbound.md).
 */
#ifndef MESHCAP_INBOUND_H
#define MESHCAP_INBOUND_H

#include "common.h"

/* Size of the exempt uid/gid arrays (istio allows lists; real pods use one or two). */
#define INB_MAX_IDS 8
/* Steered connections remembered for SO_ORIGINAL_DST (LRU backstop; entries leave when the socket closes). */
#define INB_MAX_CONNS 16384

/* inb_config.flags */
enum inb_config_flags {
	INB_F_ENABLED = 1 << 0,   /* -b non-empty: without it the program steers nothing (istio: no PREROUTING jump) */
	INB_F_ALL_PORTS = 1 << 1, /* -b '*': ports absent from inb_ports are captured */
	INB_F_IPV6 = 1 << 2,      /* the pod has IPv6 enabled (istio then writes the ip6tables twin of ISTIO_INBOUND):
	                           * native IPv6 lookups are decided too; without it they are left alone, as istio does */
};

/* Single-valued settings (array map, key 0). Ports in host byte order. */
struct inb_config {
	__u64 netns_cookie; /* the netns these objects serve: the cgroup programs ignore sockets of any other netns
	                     * (0 where userspace cannot read a cookie, before 5.14: per-pod mode, one pod per cgroup) */
	__u16 capture_port; /* -z: the proxy's inbound listener; a connection to it is never steered (it lands there anyway) */
	__u16 tunnel_port;  /* -e: never captured, whatever -b says (istio's first ISTIO_INBOUND rule) */
	__u8 flags;         /* enum inb_config_flags */
	__u8 n_uids;
	__u8 n_gids;
	__u8 _pad;
	__u32 uids[INB_MAX_IDS]; /* -u: only a listener bound by one of these (or gids) is registered by itself */
	__u32 gids[INB_MAX_IDS]; /* -g */
};

/* A steered connection as the accepting socket sees it. Addresses network order, ports host order. */
struct inb_tuple {
	__u32 local_addr;
	__u32 remote_addr;
	__u16 local_port;
	__u16 remote_port;
};

/* The IPv6 twin of inb_tuple: a steered native IPv6 connection (key of inb_steered6). */
struct inb_tuple6 {
	__u32 local_addr[4];
	__u32 remote_addr[4];
	__u16 local_port;
	__u16 remote_port;
};

/* inb_listener slots, by the family of the listening socket. A lookup takes the slot of its own family first and
 * the other one second: a dual-stack [::] listener (Go's default, HAProxy's v4v6) serves IPv4 from slot 1, and the
 * kernel's bpf_sk_assign refuses a socket that cannot take the lookup's family (an AF_INET one for IPv6, an
 * IPV6_V6ONLY one for IPv4), which is then refused (fail closed). */
enum inb_listener_slot {
	INB_SLOT_INET = 0,  /* an AF_INET listener */
	INB_SLOT_INET6 = 1, /* an AF_INET6 listener, IPv6-only or dual-stack */
	INB_SLOTS = 2,
};

/* inb_ports values. Which kind the loader writes depends on the mode, as istio's rules do:
 * -b '*' -> one INB_PORT_EXCLUDE per -d port; -b list -> one INB_PORT_CAPTURE per -b port (-d ignored). */
enum inb_port_verdict {
	INB_PORT_CAPTURE = 1,
	INB_PORT_EXCLUDE = 2,
};

/* inb_stats indices (per-CPU counters, summed by the loader for status and tests). */
enum inb_stat {
	INB_STAT_STEERED = 0,       /* assigned to the proxy listener */
	INB_STAT_PASS_LOOPBACK = 1, /* 127/8 or ::1 on either side, or the passthrough source ::6: normal lookup */
	INB_STAT_PASS_PORT = 2,     /* port not captured (tunnel, capture port, -d, not in -b) */
	INB_STAT_DROP_NO_LISTENER = 3, /* captured port but no proxy listener registered: refused (fail closed) */
	INB_STAT_DROP_ASSIGN = 4,   /* bpf_sk_assign failed (listener not usable for this lookup): refused */
	INB_STAT_REGISTERED = 5,    /* an exempt listener on the capture port was put into inb_listener by sockops */
	INB_STAT_REFUSED_OWNER = 6, /* a listener on the capture port of a non-exempt owner: NOT registered */
	INB_STAT_ORIGDST = 7,       /* SO_ORIGINAL_DST answered on a steered connection */
	INB_STAT_MAX = 8,
};

/* Key 0: struct inb_config. Array, so the lookup never fails once loaded; all-zero = disabled. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct inb_config);
} inb_cfg SEC(".maps");

/* Destination port (host order) -> enum inb_port_verdict. Only listed ports are present; not preallocated, so a
 * pod pays for the few ports it lists, not for 65536 slots. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, __u8);
} inb_ports SEC(".maps");

/* The sidecar's listening sockets on -z, one per family (enum inb_listener_slot). Filled by inbound_sockops.c when
 * an exempt process starts listening there (or from user space: meshcap's proxy, `ebpf attach` finding a
 * listener). A sockmap, not an fd in a config: the entry disappears by itself when the socket is closed, which is exactly the "proxy is down" signal the
 * fail-closed rule needs. 64-bit values so that a user-space lookup returns the socket cookie (status). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, INB_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} inb_listener SEC(".maps");

/* Socket cookie -> 1: bound to the capture port by an exempt uid/gid (post_bind), not listening yet. LRU: a socket
 * that never listens is forgotten by itself. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u8);
} inb_exempt_bound SEC(".maps");

/* Steered connections (written by sk_lookup, read by getsockopt, deleted by sockops at close). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INB_MAX_CONNS);
	__type(key, struct inb_tuple);
	__type(value, __u8);
} inb_steered SEC(".maps");

/* The same for native IPv6 connections (SOL_IPV6/IP6T_SO_ORIGINAL_DST). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INB_MAX_CONNS);
	__type(key, struct inb_tuple6);
	__type(value, __u8);
} inb_steered6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} inb_stats SEC(".maps");

static __always_inline void inb_count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&inb_stats, &stat);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline struct inb_config *inb_config(void)
{
	__u32 zero = 0;
	struct inb_config *cfg = bpf_map_lookup_elem(&inb_cfg, &zero);

	if (!cfg || !(cfg->flags & INB_F_ENABLED))
		return 0;
	return cfg;
}

#endif /* MESHCAP_INBOUND_H */
