/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DNS capture (--redirect-dns, ISTIO_META_DNS_CAPTURE), shared by connect4/connect6 (TCP and connected UDP),
 * sendmsg4/sendmsg6 (unconnected UDP), recvmsg4/recvmsg6 and getpeername4/getpeername6 (the answer's source).
 *
 * istio's rules (istio-golden/DEFAULTS.md §5): in ISTIO_OUTPUT, after the -o port RETURNs (tcp and udp) and the
 * owner RETURNs (-u/-g), and before loopback, -x, -q and -i, ISTIO_OUTPUT_DNS sends TCP and UDP to port 53 of
 * each resolv.conf nameserver (every port-53 destination with --capture-all-dns) to 15053. IPv4 servers are in
 * the iptables rules, IPv6 ones in the ip6tables rules, which exist only in a pod with IPv6 enabled; an IPv4-mapped
 * destination travels as IPv4 and meets the IPv4 list (an IPv4-mapped nameserver entry is an IPv6 one to istio, and
 * so never matches). mc_dns_decide mirrors exactly that, with the -o and owner checks of outbound.h.
 *
 * The rewritten destination is loopback of the socket's family at mc_dns_config.port. The server the app asked is
 * kept in the socket's own storage (mc_dns_orig, freed with the socket), where recvmsg restores it as the source of
 * each answer from the DNS proxy, and getpeername as the peer of a connected socket: the app sees the server it
 * asked, as with iptables' NAT. One record per socket: the last server it sent to (glibc and Go use one socket per
 * server; a socket querying two servers at once sees every answer come from the later one). Fail closed: a DNS
 * packet or connect whose record cannot be stored is refused (EPERM), never sent to the proxy blind.
 */
#ifndef MESHCAP_DNS_H
#define MESHCAP_DNS_H

#include "outbound.h"

#ifndef IPPROTO_UDP
#define IPPROTO_UDP 17
#endif

#define MC_DNS_PORT 53

/* mc_dns_config.flags */
enum mc_dns_flags {
	MC_DNS_F_ALL = 1 << 0, /* --capture-all-dns: every port-53 destination, not only the listed servers */
};

/* DNS settings of one config key (same keys as mc_config). No entry: no DNS capture for that key. */
struct mc_dns_config {
	__u16 port;  /* where captured DNS goes, host byte order (istio's agent port 15053) */
	__u8 flags;  /* enum mc_dns_flags */
	__u8 _pad[5];
};

/* Key of mc_dns_srv: one nameserver of one config key. IPv4: v6 = 0 and addr[0]; the rest is zero. */
struct mc_dns_srv_key {
	__u64 cfg;
	__u32 addr[4]; /* network byte order */
	__u8 v6;
	__u8 _pad[7];
};

/* The server a socket's DNS was sent to, kept for recvmsg and getpeername. */
struct mc_dns_orig {
	__u32 addr[4];     /* network byte order; IPv4 (v6 = 0): addr[0] */
	__u16 port;        /* host byte order */
	__u16 proxy_port;  /* the DNS proxy port the socket was sent to, host byte order */
	__u8 v6;           /* native IPv6 server (the socket talks to [::1]) */
	__u8 _pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_MAX_POLICIES);
	__type(key, __u64);
	__type(value, struct mc_dns_config);
} mc_dns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_MAX_LIST_ENTRIES);
	__type(key, struct mc_dns_srv_key);
	__type(value, __u8);
} mc_dns_srv SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_dns_orig);
} mc_dns_orig SEC(".maps");

/* What a DNS hook does with a send or connect. */
enum mc_dns_outcome {
	MC_DNS_PASS = 0,    /* not DNS capture: the other rules decide */
	MC_DNS_CAPTURE = 1, /* recorded: rewrite to loopback of the family at *proxy_port */
	MC_DNS_REFUSE = 2,  /* DNS capture asked for and the record could not be stored: fail the call (EPERM) */
};

static __always_inline int mc_dns_server_in(__u64 cfg_key, const struct mc_dest *d)
{
	struct mc_dns_srv_key k;

	__builtin_memset(&k, 0, sizeof(k)); /* padding is part of the hash key */
	k.cfg = cfg_key;
	k.v6 = d->v6;
	k.addr[0] = d->addr[0];
	if (d->v6) {
		k.addr[1] = d->addr[1];
		k.addr[2] = d->addr[2];
		k.addr[3] = d->addr[3];
	}
	return bpf_map_lookup_elem(&mc_dns_srv, &k) != NULL;
}

/* istio's ISTIO_OUTPUT up to ISTIO_OUTPUT_DNS for a UDP or TCP socket sending to d: -o port, owner, then the
 * server list (or all of port 53). The DNS port of the key in *proxy_port when captured. */
static __always_inline int mc_dns_match(struct bpf_sock_addr *ctx, const struct mc_dest *d, __u16 *proxy_port)
{
	if (d->port != MC_DNS_PORT || (ctx->protocol != IPPROTO_UDP && ctx->protocol != IPPROTO_TCP))
		return 0;
	__u64 cfg_key;
	struct mc_config *cfg = mc_lookup_config(mc_sock_addr_netns(ctx), &cfg_key);
	if (!cfg)
		return 0;
	struct mc_dns_config *dns = bpf_map_lookup_elem(&mc_dns, &cfg_key);
	if (!dns || !dns->port || (d->v6 && !(cfg->flags & MC_F_IPV6)))
		return 0; /* no DNS capture; native IPv6 only where istio writes ip6tables rules */
	if (mc_port_in(cfg_key, d->port, MC_PORT_OUT_EXCLUDE) || mc_owner_exempt(cfg) || mc_group_exempt(cfg, cfg_key))
		return 0; /* rules 9, 11c, 12c and 13 come before ISTIO_OUTPUT_DNS */
	if (!(dns->flags & MC_DNS_F_ALL) && !mc_dns_server_in(cfg_key, d))
		return 0;
	*proxy_port = dns->port;
	return 1;
}

/* Decide a DNS send or connect of ctx's socket to d and record the server for a captured one. forget: drop the
 * socket's record when it is not captured (a connect replaces the peer; an unconnected send does not). */
static __always_inline int mc_dns_decide(struct bpf_sock_addr *ctx, const struct mc_dest *d, __u16 *proxy_port, int forget)
{
	struct bpf_sock *sk = ctx->sk;
	if (!mc_dns_match(ctx, d, proxy_port)) {
		if (forget && sk)
			bpf_sk_storage_delete(&mc_dns_orig, sk);
		return MC_DNS_PASS;
	}
	if (!sk)
		return MC_DNS_REFUSE;
	struct mc_dns_orig *o = bpf_sk_storage_get(&mc_dns_orig, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return MC_DNS_REFUSE;
	o->addr[0] = d->addr[0];
	o->addr[1] = d->v6 ? d->addr[1] : 0;
	o->addr[2] = d->v6 ? d->addr[2] : 0;
	o->addr[3] = d->v6 ? d->addr[3] : 0;
	o->port = d->port;
	o->proxy_port = *proxy_port;
	o->v6 = d->v6;
	if (ctx->type == SOCK_STREAM)
		mc_forget(sk); /* a TCP socket re-connecting after a captured connect: its old 15001 record goes */
	return MC_DNS_CAPTURE;
}

/* IPv4 hooks (connect4, sendmsg4): DNS capture of ctx's destination, rewritten to 127.0.0.1:<DNS port>. */
static __always_inline int mc_dns4(struct bpf_sock_addr *ctx, int forget)
{
	struct mc_dest d;
	__u16 proxy_port = 0;

	mc_dest4(ctx, &d);
	int out = mc_dns_decide(ctx, &d, &proxy_port, forget);
	if (out == MC_DNS_CAPTURE) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(proxy_port);
	}
	return out;
}

/* Write loopback of the destination's kind into an IPv6 context: ::ffff:127.0.0.1 for a mapped one, ::1 else. */
static __always_inline void mc_set_loopback6(struct bpf_sock_addr *ctx, int mapped, __u16 port)
{
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(port);
}

/* IPv6 hooks (connect6, sendmsg6): the same for AF_INET6 sockets, IPv4-mapped destinations with the IPv4 list. */
static __always_inline int mc_dns6(struct bpf_sock_addr *ctx, int forget)
{
	struct mc_dest d;
	int mapped = 0;
	__u16 proxy_port = 0;

	mc_dest6(ctx, &d, &mapped);
	int out = mc_dns_decide(ctx, &d, &proxy_port, forget);
	if (out == MC_DNS_CAPTURE)
		mc_set_loopback6(ctx, mapped, proxy_port);
	return out;
}

/* The socket's record when ctx's address (an answer's source, or the peer) is the DNS proxy it was sent to:
 * loopback of the record's kind at its proxy port. v4 = the address is IPv4 (or IPv4-mapped). */
static __always_inline struct mc_dns_orig *mc_dns_from_proxy(struct bpf_sock_addr *ctx, int v4, __u32 a0, __u32 a1,
                                                             __u32 a2, __u32 a3)
{
	/* Why the address first: this runs for every UDP receive of the pod; most come from elsewhere. */
	if (v4 && !(a3 == bpf_htonl(0x7f000001) && (a0 | a1) == 0 && (a2 == 0 || a2 == bpf_htonl(0xffff))))
		return NULL;
	if (!v4 && !((a0 | a1 | a2) == 0 && a3 == bpf_htonl(1)))
		return NULL;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return NULL;
	struct mc_dns_orig *o = bpf_sk_storage_get(&mc_dns_orig, sk, 0, 0);
	if (!o || bpf_ntohs((__u16)ctx->user_port) != o->proxy_port || o->v6 == v4)
		return NULL;
	return o;
}

/* recvmsg4, getpeername4: 127.0.0.1:<DNS port> becomes the server the socket asked. */
static __always_inline void mc_dns_restore4(struct bpf_sock_addr *ctx)
{
	struct mc_dns_orig *o = mc_dns_from_proxy(ctx, 1, 0, 0, 0, ctx->user_ip4);
	if (!o)
		return;
	ctx->user_ip4 = o->addr[0];
	ctx->user_port = bpf_htons(o->port);
}

/* recvmsg6, getpeername6: ::ffff:127.0.0.1 or ::1 at the DNS port becomes the server the socket asked. */
static __always_inline void mc_dns_restore6(struct bpf_sock_addr *ctx)
{
	__u32 w0 = *(volatile __u32 *)&ctx->user_ip6[0];
	__u32 w1 = *(volatile __u32 *)&ctx->user_ip6[1];
	__u32 w2 = *(volatile __u32 *)&ctx->user_ip6[2];
	__u32 w3 = *(volatile __u32 *)&ctx->user_ip6[3];
	int mapped = mc_is_v4mapped(w0, w1, w2);
	struct mc_dns_orig *o = mc_dns_from_proxy(ctx, mapped, w0, w1, w2, w3);
	if (!o)
		return;
	if (mapped) {
		ctx->user_ip6[3] = o->addr[0];
	} else {
		ctx->user_ip6[0] = o->addr[0];
		ctx->user_ip6[1] = o->addr[1];
		ctx->user_ip6[2] = o->addr[2];
		ctx->user_ip6[3] = o->addr[3];
	}
	ctx->user_port = bpf_htons(o->port);
}

#endif /* MESHCAP_DNS_H */
