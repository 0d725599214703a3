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

/* A destination as the decision sees it: an IPv4 address (v6 = 0, addr[0]) or a native IPv6 one. */
struct mc_dest {
	__u32 addr[4]; /* network byte order */
	__u16 port;    /* host byte order */
	__u8 v6;
};

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

/* -u / -g: the caller's real uid/gid, as istio's "-m owner --uid-owner/--gid-owner" sees the socket owner. */
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

/* 127/8 and the configured loopback CIDR. When an -i CIDR is loopback, istio omits the rules that return all
 * traffic leaving through lo, so only the configured loopback CIDR (rule 15) stays exempt. IPv6: ::1/128, istio's
 * fixed IPv6 loopback CIDR (rule 15), which is also the only IPv6 destination routed over lo by address. */
static __always_inline int mc_loopback_exempt(const struct mc_config *cfg, const struct mc_dest *d)
{
	if (d->v6)
		return d->addr[0] == 0 && d->addr[1] == 0 && d->addr[2] == 0 && d->addr[3] == bpf_htonl(1);
	__u32 daddr = d->addr[0];
	if ((daddr & cfg->loopback_mask) == cfg->loopback_addr)
		return 1;
	if (!(cfg->flags & MC_F_LOOPBACK_INCLUDED) && (daddr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000))
		return 1;
	return 0;
}

/* The one netns-cookie read of this program type (sock_addr programs have bpf_get_netns_cookie on every kernel
 * meshcap supports, so the cookie is recorded in mc_client for the program types that lack it). */
static __always_inline __u64 mc_sock_addr_netns(struct bpf_sock_addr *ctx)
{
	return bpf_get_netns_cookie(ctx);
}

/* Outcomes of the decision, in ISTIO_OUTPUT order. */
enum mc_verdict {
	MC_V_CAPTURE = 0,
	MC_V_EXEMPT_PORT,
	MC_V_EXEMPT_OWNER,
	MC_V_EXEMPT_LOOPBACK,
	MC_V_EXEMPT_CIDR,
	MC_V_NOT_INCLUDED,
};

static __always_inline int mc_decide(const struct mc_config *cfg, __u64 cfg_key, const struct mc_dest *d)
{
	if (mc_port_in(cfg_key, d->port, MC_PORT_OUT_EXCLUDE))
		return MC_V_EXEMPT_PORT;
	if (mc_owner_exempt(cfg))
		return MC_V_EXEMPT_OWNER;
	if (mc_loopback_exempt(cfg, d))
		return MC_V_EXEMPT_LOOPBACK;
	if (mc_cidr_in(&mc_cidr_excl, &mc_cidr6_excl, cfg_key, d))
		return MC_V_EXEMPT_CIDR;
	if (mc_port_in(cfg_key, d->port, MC_PORT_OUT_INCLUDE))
		return MC_V_CAPTURE;
	if (cfg->flags & MC_F_OUTBOUND_ALL)
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
 * destination (mc_client, mc_dst6). *proxy_port is set on MC_OUT_CAPTURE; the caller rewrites the address in its
 * own family. A native IPv6 destination is decided only in a pod with MC_F_IPV6 (istio: no ip6tables rules else). */
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
	if (verdict != MC_V_CAPTURE) {
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
	cl->orig.flags = (!d->v6 && (cfg->flags & MC_F_FAST_PATH)) ? MC_ORIG_F_FAST_PATH : 0;
	cl->orig.cfg = cfg_key;
	cl->netns = netns;
	mc_count(&st->captured);
	*proxy_port = cfg->proxy_port;
	return MC_OUT_CAPTURE;
}

#endif /* MESHCAP_OUTBOUND_H */
