/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Definitions of the inbound capture program (sk_lookup.c), shared with Go through bpf2go -type.
 *
 * The inbound side is per network namespace: one sk_lookup link per pod netns, each with its own maps
 * (pinned under <pin root>/netns-<cookie>/inbound/). Nothing here is shared with the outbound objects
 * (meshcap.h), so the two halves can be attached, replaced and detached independently.
 *
 * Settings are runtime data, not -D permutations: inb_config holds the single-valued settings, inb_ports the
 * per-port verdicts, inb_listener the proxy's listening socket (filled by the proxy itself, see docs/inbound.md).
 */
#ifndef MESHCAP_INBOUND_H
#define MESHCAP_INBOUND_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif

/* inb_config.flags */
enum inb_config_flags {
	INB_F_ENABLED = 1 << 0,   /* -b non-empty: without it the program steers nothing (istio: no PREROUTING jump) */
	INB_F_ALL_PORTS = 1 << 1, /* -b '*': ports absent from inb_ports are captured */
};

/* Single-valued settings (array map, key 0). Ports in host byte order. */
struct inb_config {
	__u16 capture_port; /* -z: the proxy's inbound listener; a connection to it is never steered (it lands there anyway) */
	__u16 tunnel_port;  /* -e: never captured, whatever -b says (istio's first ISTIO_INBOUND rule) */
	__u8 flags;         /* enum inb_config_flags */
	__u8 _pad[3];
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
	INB_STAT_PASS_LOOPBACK = 1, /* 127/8 source or destination: left to the normal lookup */
	INB_STAT_PASS_PORT = 2,     /* port not captured (tunnel, capture port, -d, not in -b) */
	INB_STAT_DROP_NO_LISTENER = 3, /* captured port but no proxy listener registered: refused (fail closed) */
	INB_STAT_DROP_ASSIGN = 4,   /* bpf_sk_assign failed (listener not usable for this lookup): refused */
	INB_STAT_MAX = 5,
};

#endif /* MESHCAP_INBOUND_H */
