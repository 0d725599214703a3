/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The outbound decision of the connect programs (connect4.c, connect6.c): istio's ISTIO_OUTPUT order, the counters,
 * the capacity slot and the client record, for both families (ip6tables gets the same rules with the IPv6 lists and
 * ::1/128 as loopback). One copy: connect6 decides an IPv4-mapped destination (::ffff:a.b.c.d) exactly as connect4
 * decides a.b.c.d, and a native IPv6 one with the same code and the IPv6 lists, through mc_outbound.
 */
#ifndef MESHCAP_OUTBOUND_H
#define MESHCAP_OUTBOUND_H

#include "meshcap.h"

static __always_inline int mc_port_in(__u64 cfg_key, __u16 port, __u8 kind)
{
	struct mc_port_key k;

	__builtin_memset(&k, 0, sizeof(k)); /* padding is part of the hash key */
	k.cfg = cfg_key;
	k.port = port;
	k.kind = kind;
	return bpf_map_lookup_elem(&mc_ports, &k) != NULL;
}

/* A destination as the decision sees it: an IPv4 address (v6 = 0, addr[0]) or a native IPv6 one, and the address
 * the socket is bound to in the same family (all zero when unbound), which istio's rule 10 matches. */
struct mc_dest {
	__u32 addr[4]; /* network byte order */
	__u32 src[4];  /* network byte order */
	__u16 port;    /* host byte order */
	__u8 v6;
};

/* The destination of an IPv4 sock_addr context (connect4, sendmsg4 and DNS capture). */
static __always_inline void mc_dest4(struct bpf_sock_addr *ctx, struct mc_dest *d)
{
	__builtin_memset(d, 0, sizeof(*d));
	d->addr[0] = ctx->user_ip4;
	d->port = bpf_ntohs((__u16)ctx->user_port);
}

/* The destination of an IPv6 sock_addr context; *mapped is set for ::ffff:a.b.c.d (then d is IPv4). */
static __always_inline void mc_dest6(struct bpf_sock_addr *ctx, struct mc_dest *d, int *mapped)
{
	__builtin_memset(d, 0, sizeof(*d));
	/* Why volatile: one 4-byte context load per word (the verifier checks the access size of user_ip6). */
	__u32 w0 = *(volatile __u32 *)&ctx->user_ip6[0];
	__u32 w1 = *(volatile __u32 *)&ctx->user_ip6[1];
	__u32 w2 = *(volatile __u32 *)&ctx->user_ip6[2];
	__u32 w3 = *(volatile __u32 *)&ctx->user_ip6[3];
	d->port = bpf_ntohs((__u16)ctx->user_port);
	*mapped = mc_is_v4mapped(w0, w1, w2);
	if (*mapped) {
		d->addr[0] = w3;
		return;
	}
	d->v6 = 1;
	d->addr[0] = w0;
	d->addr[1] = w1;
	d->addr[2] = w2;
	d->addr[3] = w3;
}

/* connect() to 0.0.0.0 or :: reaches a local address, and the rules see that one: IPv4 connects to the socket's
 * bound address, or to 127.0.0.1 (and binds it) when unbound; IPv6 always to ::1 (tcp_v4_connect's route lookup,
 * tcp_v6_connect). The decision works on that destination, and so does the recorded original destination. */
static __always_inline void mc_resolve_unspecified(struct mc_dest *d)
{
	if (!d->v6) {
		if (!d->addr[0])
			d->addr[0] = d->src[0] ? d->src[0] : bpf_htonl(0x7f000001);
		return;
	}
	if (!(d->addr[0] | d->addr[1] | d->addr[2] | d->addr[3]))
		d->addr[3] = bpf_htonl(1);
}

static __always_inline int mc_cidr_in(void *trie4, void *trie6, __u64 cfg_key, const struct mc_dest *d)
{
	if (d->v6) {
		struct mc_lpm6_key k = {
			.prefixlen = 64 + 128,
			.cfg_hi = (__u32)(cfg_key >> 32),
			.cfg_lo = (__u32)cfg_key,
		};
		k.addr[0] = d->addr[0];
		k.addr[1] = d->addr[1];
		k.addr[2] = d->addr[2];
		k.addr[3] = d->addr[3];
		return bpf_map_lookup_elem(trie6, &k) != NULL;
	}
	struct mc_lpm_key k = {
		.prefixlen = 64 + 32, /* full config key + full address: the trie finds the longest stored prefix */
		.cfg_hi = (__u32)(cfg_key >> 32),
		.cfg_lo = (__u32)cfg_key,
		.addr = d->addr[0],
	};
	return bpf_map_lookup_elem(trie4, &k) != NULL;
}

static __always_inline int mc_is_v6_loopback(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

/* Whether the kernel routes d over lo (istio's "-o lo"): 127/8, ::1, or an address of the pod's own netns
 * (mc_local, written from Policy.LocalAddrs). 0.0.0.0 and :: were resolved before (mc_resolve_unspecified). */
static __always_inline int mc_over_lo(__u64 cfg_key, const struct mc_dest *d)
{
	struct mc_local_key k = {.cfg = cfg_key};

	if (d->v6) {
		if (mc_is_v6_loopback(d->addr))
			return 1;
		k.addr[0] = d->addr[0];
		k.addr[1] = d->addr[1];
		k.addr[2] = d->addr[2];
		k.addr[3] = d->addr[3];
	} else {
		if ((d->addr[0] & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000))
			return 1;
		k.addr[2] = bpf_htonl(0xffff);
		k.addr[3] = d->addr[0];
	}
	return bpf_map_lookup_elem(&mc_local, &k) != NULL;
}

/* Rule 10: "-o lo -s 127.0.0.6/32 -j RETURN" (::6 in the IPv6 copy): the sidecar's inbound passthrough source. */
static __always_inline int mc_src_passthrough(const struct mc_dest *d)
{
	if (d->v6)
		return d->src[0] == 0 && d->src[1] == 0 && d->src[2] == 0 && d->src[3] == bpf_htonl(6);
	return d->src[0] == bpf_htonl(0x7f000006);
}

/* "-d LO" of rules 11a and 15: the configured loopback CIDR (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR), ::1/128 for IPv6. */
static __always_inline int mc_in_lo_cidr(const struct mc_config *cfg, const struct mc_dest *d)
{
	if (d->v6)
		return mc_is_v6_loopback(d->addr);
	return (d->addr[0] & cfg->loopback_mask) == cfg->loopback_addr;
}

/* Outcomes of the decision, in ISTIO_OUTPUT order. */
enum mc_verdict {
	MC_V_CAPTURE = 0,
	MC_V_EXEMPT_PORT,
	MC_V_EXEMPT_OWNER,
	MC_V_EXEMPT_LOOPBACK,
	MC_V_EXEMPT_CIDR,
	MC_V_NOT_INCLUDED,
	MC_V_INBOUND, /* rule 11a: captured, to the inbound listener (cfg->inbound_port) */
	MC_V_NONE = -1, /* no owner rule matched: the decision goes on */
};

/* One owner's three rules (11a-c for a uid, 12a-c for a gid), given whether the socket's owner is that id:
 *   a. "-o lo ! -d LO -p tcp ! --dport <-e> -m owner --uid-owner U -j ISTIO_IN_REDIRECT"
 *   b. "-o lo -m owner ! --uid-owner U -j RETURN" (absent when an -i CIDR is loopback)
 *   c. "-m owner --uid-owner U -j RETURN" */
static __always_inline int mc_owner_rule(const struct mc_config *cfg, int match, int lo, int to_inbound)
{
	if (match && to_inbound)
		return MC_V_INBOUND;
	if (lo && !match && !(cfg->flags & MC_F_LOOPBACK_INCLUDED))
		return MC_V_EXEMPT_LOOPBACK;
	return match ? MC_V_EXEMPT_OWNER : MC_V_NONE;
}

/* Rules 11 and 12 in istio's order: every -u uid, then every -g gid, first match wins. The owner is the caller's
 * uid/gid, as "-m owner" sees the socket's (xt_owner without --suppl-groups: the primary gid only). */
static __always_inline int mc_owner_rules(const struct mc_config *cfg, const struct mc_dest *d, int lo)
{
	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ugid;
	__u32 gid = (__u32)(ugid >> 32);
	int to_inbound = lo && !mc_in_lo_cidr(cfg, d) && d->port != cfg->tunnel_port;
	int v;

	for (int i = 0; i < MC_MAX_IDS; i++) {
		if (i >= cfg->n_uids)
			break;
		v = mc_owner_rule(cfg, cfg->uids[i] == uid, lo, to_inbound);
		if (v != MC_V_NONE)
			return v;
	}
	for (int i = 0; i < MC_MAX_IDS; i++) {
		if (i >= cfg->n_gids)
			break;
		v = mc_owner_rule(cfg, cfg->gids[i] == gid, lo, to_inbound);
		if (v != MC_V_NONE)
			return v;
	}
	return MC_V_NONE;
}

/* Rules 11c/12c alone ("-m owner --uid-owner U -j RETURN", the gid twin): whether the caller is one of the -u/-g
 * owners. DNS capture (dns.h) uses it: with DNS on, istio's 11a/11b exclude port 53, so only 11c/12c precede
 * ISTIO_OUTPUT_DNS. */
static __always_inline int mc_owner_exempt(const struct mc_config *cfg)
{
	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ugid;
	__u32 gid = (__u32)(ugid >> 32);

	for (int i = 0; i < MC_MAX_IDS; i++) {
		if (i < cfg->n_uids && cfg->uids[i] == uid)
			return 1;
		if (i < cfg->n_gids && cfg->gids[i] == gid)
			return 1;
	}
	return 0;
}

/* Rule 13, istio's owner groups: whether it returns the caller. Include list: one "-m owner ! --gid-owner G1
 * ! --gid-owner G2 ... -j RETURN" rule, so an owner outside the list returns; exclude list: "-m owner --gid-owner G
 * -j RETURN" per group. Like the rules 12, xt_owner without --suppl-groups compares the primary gid only. */
static __always_inline int mc_group_exempt(const struct mc_config *cfg, __u64 cfg_key)
{
	if (!(cfg->flags & (MC_F_GROUPS_INCLUDE | MC_F_GROUPS_EXCLUDE)))
		return 0;
	struct mc_group_key k = {.cfg = cfg_key, .gid = (__u32)(bpf_get_current_uid_gid() >> 32)};
	int listed = bpf_map_lookup_elem(&mc_groups, &k) != 0;
	return (cfg->flags & MC_F_GROUPS_INCLUDE) ? !listed : listed;
}

/* The one netns-cookie read of this program type (sock_addr programs have bpf_get_netns_cookie on every kernel
 * meshcap supports, so the cookie is recorded in mc_client for the program types that lack it). */
static __always_inline __u64 mc_sock_addr_netns(struct bpf_sock_addr *ctx)
{
	return bpf_get_netns_cookie(ctx);
}

/* istio's ISTIO_OUTPUT for a TCP connect, rule by rule (DEFAULTS.md section 5). ISTIO_OUTBOUND_OWNER_GROUPS=""
 * (rule 13, a bare RETURN) reaches the programs as a policy with nothing included (capture.Config.Policy); a group
 * list is mc_group_exempt. */
static __always_inline int mc_decide(const struct mc_config *cfg, __u64 cfg_key, const struct mc_dest *d)
{
	if (mc_port_in(cfg_key, d->port, MC_PORT_OUT_EXCLUDE)) /* 9 */
		return MC_V_EXEMPT_PORT;
	int lo = mc_over_lo(cfg_key, d);
	if (lo && mc_src_passthrough(d)) /* 10 */
		return MC_V_EXEMPT_LOOPBACK;
	int v = mc_owner_rules(cfg, d, lo); /* 11, 12 */
	if (v != MC_V_NONE)
		return v;
	if (mc_group_exempt(cfg, cfg_key)) /* 13 */
		return MC_V_EXEMPT_OWNER;
	if (mc_in_lo_cidr(cfg, d)) /* 15 */
		return MC_V_EXEMPT_LOOPBACK;
	if (mc_cidr_in(&mc_cidr_excl, &mc_cidr6_excl, cfg_key, d)) /* 16 */
		return MC_V_EXEMPT_CIDR;
	if (mc_port_in(cfg_key, d->port, MC_PORT_OUT_INCLUDE)) /* 17 */
		return MC_V_CAPTURE;
	if (cfg->flags & MC_F_OUTBOUND_ALL) /* 18 */
		return MC_V_CAPTURE;
	return mc_cidr_in(&mc_cidr_incl, &mc_cidr6_incl, cfg_key, d) ? MC_V_CAPTURE : MC_V_NOT_INCLUDED;
}

static __always_inline void mc_count_exempt(struct mc_stats *st, int verdict)
{
	switch (verdict) {
	case MC_V_EXEMPT_PORT:
		mc_count(&st->exempt_port);
		break;
	case MC_V_EXEMPT_OWNER:
		mc_count(&st->exempt_owner);
		break;
	case MC_V_EXEMPT_LOOPBACK:
		mc_count(&st->exempt_loopback);
		break;
	case MC_V_EXEMPT_CIDR:
		mc_count(&st->exempt_cidr);
		break;
	default:
		mc_count(&st->not_included);
	}
}

/* Take one slot of the pod's capacity for this socket (once per socket: a re-connect after a failed connect keeps
 * its slot). 0 when the pod is full. */
static __always_inline int mc_take_slot(struct mc_stats *st, struct mc_client *cl, __u32 max_conns)
{
	if (cl->flags & MC_CL_F_COUNTED)
		return 1;
	int ok = 0;
	bpf_spin_lock(&st->lock);
	if (st->conns < (__s64)max_conns) {
		st->conns++;
		ok = 1;
	}
	bpf_spin_unlock(&st->lock);
	if (ok)
		cl->flags |= MC_CL_F_COUNTED;
	return ok;
}

/* A socket connecting again after a failed captured connect, this time to an exempt destination, must not keep
 * the old record: getpeername4 would show the old destination. Give its slot back and drop it. */
static __always_inline void mc_forget(struct bpf_sock *sk)
{
	struct mc_client *cl = bpf_sk_storage_get(&mc_client, sk, 0, 0);
	if (!cl)
		return;
	if (cl->flags & MC_CL_F_COUNTED) {
		struct mc_stats *old = bpf_map_lookup_elem(&mc_stats, &cl->orig.cfg);
		if (old)
			mc_gauge_add(old, &old->conns, -1);
	}
	bpf_sk_storage_delete(&mc_client, sk);
}

/* What the connect program does with the socket (mc_outbound). */
enum mc_outcome {
	MC_OUT_PASS = 0,    /* not captured: the connect proceeds untouched */
	MC_OUT_CAPTURE = 1, /* captured and recorded: rewrite to the proxy (*proxy_port, loopback of the family) */
	MC_OUT_REFUSE = 2,  /* capture asked for and impossible (capacity, no storage): fail the connect (EPERM) */
};

/* Record d as sk's original destination in cl (and, for IPv6, in mc_dst6). 0 when the IPv6 storage cannot be had. */
static __always_inline int mc_record(struct bpf_sock *sk, struct mc_client *cl, const struct mc_dest *d)
{
	cl->flags &= ~MC_CL_F_IPV6;
	cl->orig.addr = d->addr[0];
	if (!d->v6)
		return 1;
	struct mc_dst6 *d6 = bpf_sk_storage_get(&mc_dst6, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!d6)
		return 0;
	d6->addr[0] = d->addr[0];
	d6->addr[1] = d->addr[1];
	d6->addr[2] = d->addr[2];
	d6->addr[3] = d->addr[3];
	cl->orig.addr = 0;
	cl->flags |= MC_CL_F_IPV6;
	return 1;
}

/* Decide a TCP connect of ctx's socket to d, count it, and for a captured one take a slot and record the original
 * destination (mc_client, mc_dst6). *proxy_port is set on MC_OUT_CAPTURE: the outbound port, or the inbound one for
 * rule 11a (the proxy's own connection over lo, which istio sends to ISTIO_IN_REDIRECT); the caller rewrites the
 * address in its own family. A native IPv6 destination is decided only in a pod with MC_F_IPV6 (istio: no
 * ip6tables rules else). */
static __always_inline int mc_outbound(struct bpf_sock_addr *ctx, const struct mc_dest *d, __u16 *proxy_port)
{
	__u64 netns = mc_sock_addr_netns(ctx);
	__u64 cfg_key;
	struct mc_config *cfg = mc_lookup_config(netns, &cfg_key);
	struct bpf_sock *sk = ctx->sk;
	if (!cfg || !cfg->proxy_port || (d->v6 && !(cfg->flags & MC_F_IPV6))) {
		if (sk && cfg)
			mc_forget(sk);
		return MC_OUT_PASS;
	}

	int verdict = mc_decide(cfg, cfg_key, d);
	struct mc_stats *st = mc_stats_of(cfg_key);
	if (verdict != MC_V_CAPTURE && verdict != MC_V_INBOUND) {
		if (st)
			mc_count_exempt(st, verdict);
		if (sk)
			mc_forget(sk);
		return MC_OUT_PASS;
	}
	if (!st || !sk)
		return MC_OUT_REFUSE; /* no counters, no socket: refuse rather than capture blind */
	struct mc_client *cl = bpf_sk_storage_get(&mc_client, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!cl || !mc_record(sk, cl, d) || !mc_take_slot(st, cl, cfg->max_conns)) {
		if (cl)
			mc_forget(sk); /* gives back a slot a failed re-connect still held */
		mc_count(&st->refused_full);
		return MC_OUT_REFUSE; /* at capacity (or no storage), the connect fails closed */
	}
	cl->orig.port = d->port;
	/* the fast path pairs an app with the outbound listener only */
	cl->orig.flags = (!d->v6 && verdict == MC_V_CAPTURE && (cfg->flags & MC_F_FAST_PATH)) ? MC_ORIG_F_FAST_PATH : 0;
	cl->orig.cfg = cfg_key;
	cl->netns = netns;
	mc_count(&st->captured);
	*proxy_port = verdict == MC_V_INBOUND ? cfg->inbound_port : cfg->proxy_port;
	return MC_OUT_CAPTURE;
}

/* 127.a.b.c (a and c in 1..254: never 127.0.0.1, 127.0.0.6, a network or broadcast address) from a hash of the
 * original destination d. Why: every captured socket connected to 127.0.0.1:<port> would share one 4-tuple space,
 * capping a pod at one ephemeral port range of concurrent connections and failing a second connect from one bound
 * source port (SO_REUSEADDR) with EADDRNOTAVAIL. Spread over 127/8, two destinations collide only by hash. */
static __always_inline __u32 mc_spread_addr4(const struct mc_dest *d)
{
	__u32 h = d->addr[0] ^ d->addr[1] ^ d->addr[2] ^ d->addr[3] ^ ((__u32)d->port * 0x9e3779b1);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	__u32 a = 1 + (h & 0xff) % 254;
	__u32 b = (h >> 8) & 0xff;
	__u32 c = 1 + ((h >> 16) & 0xff) % 254;
	return bpf_htonl(0x7f000000 | a << 16 | b << 8 | c);
}

/* The IPv4 address a captured connection to d is sent to, at port: mc_spread_addr4(d) when a listener accepts
 * there (the sidecar listens on 0.0.0.0:<port>, as Envoy's virtual outbound listener and meshcap proxy do), else
 * 127.0.0.1 (a sidecar that listens on 127.0.0.1 only keeps working, within one 4-tuple space). */
static __always_inline __u32 mc_proxy_addr4(struct bpf_sock_addr *ctx, const struct mc_dest *d, __u16 port)
{
	struct bpf_sock_tuple t;
	__builtin_memset(&t, 0, sizeof(t));
	t.ipv4.saddr = bpf_htonl(0x7f000001);
	t.ipv4.daddr = mc_spread_addr4(d);
	t.ipv4.dport = bpf_htons(port);
	struct bpf_sock *sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return bpf_htonl(0x7f000001);
	bpf_sk_release(sk);
	return t.ipv4.daddr;
}

#endif /* MESHCAP_OUTBOUND_H */
