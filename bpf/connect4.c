// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4: outbound capture. A TCP connect() from a process in the attached cgroup is rewritten to
 * 127.0.0.1:<proxy_port> unless exempt, and the original destination is recorded under the socket cookie.
 *
 * The decision mirrors istio's nat ISTIO_OUTPUT chain, in the same order and with the same meaning
 * (istio-golden/DEFAULTS.md section 5):
 *   9.  -o port                          -> RETURN (not captured, for everyone)
 *   11/12. owner uid in -u / gid in -g    -> RETURN (the proxy's own traffic goes direct)
 *   11b/15. loopback destination          -> RETURN
 *   16. -x CIDR                           -> RETURN
 *   17. -q port                           -> REDIRECT
 *   18. -i CIDR, or -i '*'                -> REDIRECT
 *   otherwise                             -> not captured
 * UDP (and anything that is not TCP) is never touched. Each outcome is counted per pod (struct mc_stats).
 *
 * Fail closed: a captured connect takes one slot of the pod's capacity (mc_config.max_conns) and records its
 * original destination in the socket's own storage (mc_client) before it is rewritten. When the pod is at capacity,
 * or the record cannot be made, the connect is refused (EPERM) and counted: it is never let through uncaptured and
 * never sent to the proxy without a destination. The slot is given back when the socket is released
 * (sockrelease.c), whatever happened to the connection.
 */
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

static __always_inline int mc_cidr_in(void *trie, __u64 cfg_key, __u32 addr)
{
	struct mc_lpm_key k = {
		.prefixlen = 64 + 32, /* full config key + full address: the trie finds the longest stored prefix */
		.cfg_hi = (__u32)(cfg_key >> 32),
		.cfg_lo = (__u32)cfg_key,
		.addr = addr,
	};
	return bpf_map_lookup_elem(trie, &k) != NULL;
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
 * traffic leaving through lo, so only the configured loopback CIDR (rule 15) stays exempt. */
static __always_inline int mc_loopback_exempt(const struct mc_config *cfg, __u32 daddr)
{
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

static __always_inline int mc_decide(const struct mc_config *cfg, __u64 cfg_key, __u32 daddr, __u16 dport)
{
	if (mc_port_in(cfg_key, dport, MC_PORT_OUT_EXCLUDE))
		return MC_V_EXEMPT_PORT;
	if (mc_owner_exempt(cfg))
		return MC_V_EXEMPT_OWNER;
	if (mc_loopback_exempt(cfg, daddr))
		return MC_V_EXEMPT_LOOPBACK;
	if (mc_cidr_in(&mc_cidr_excl, cfg_key, daddr))
		return MC_V_EXEMPT_CIDR;
	if (mc_port_in(cfg_key, dport, MC_PORT_OUT_INCLUDE))
		return MC_V_CAPTURE;
	if (cfg->flags & MC_F_OUTBOUND_ALL)
		return MC_V_CAPTURE;
	return mc_cidr_in(&mc_cidr_incl, cfg_key, daddr) ? MC_V_CAPTURE : MC_V_NOT_INCLUDED;
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

SEC("cgroup/connect4")
int mc_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return SYS_PROCEED;

	__u64 netns = mc_sock_addr_netns(ctx);
	__u64 cfg_key;
	struct mc_config *cfg = mc_lookup_config(netns, &cfg_key);
	if (!cfg || !cfg->proxy_port)
		return SYS_PROCEED;

	__u32 daddr = ctx->user_ip4;
	__u16 dport = bpf_ntohs((__u16)ctx->user_port);
	int verdict = mc_decide(cfg, cfg_key, daddr, dport);
	struct mc_stats *st = mc_stats_of(cfg_key);
	struct bpf_sock *sk = ctx->sk;
	if (verdict != MC_V_CAPTURE) {
		if (st)
			mc_count_exempt(st, verdict);
		if (sk)
			mc_forget(sk);
		return SYS_PROCEED;
	}
	if (!st || !sk)
		return 0; /* no counters, no socket: refuse rather than capture blind */
	struct mc_client *cl = bpf_sk_storage_get(&mc_client, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!cl || !mc_take_slot(st, cl, cfg->max_conns)) {
		if (cl)
			bpf_sk_storage_delete(&mc_client, sk);
		mc_count(&st->refused_full);
		return 0; /* EPERM: at capacity, the connect fails closed */
	}
	cl->orig.addr = daddr;
	cl->orig.port = dport;
	cl->orig.flags = (cfg->flags & MC_F_FAST_PATH) ? MC_ORIG_F_FAST_PATH : 0;
	cl->orig.cfg = cfg_key;
	cl->netns = netns;
	mc_count(&st->captured);

	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(cfg->proxy_port);
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
