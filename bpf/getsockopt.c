// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getsockopt: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) on the proxy's accepted socket with the original
 * destination recorded by sockops, exactly as netfilter would after a REDIRECT. This is how an unprivileged proxy
 * (uid 1337, no CAP_BPF) learns where a connection was going. Every other getsockopt is left alone.
 *
 * A caller whose buffer holds a struct mc_origdst_ext (meshcap proxy) also learns whether its socket is on the
 * fast path (in mc_sockhash, see fastpath.c): it then must read it with read(), not splice. The extended answer is
 * given only then; otherwise the answer is the plain 16-byte sockaddr_in netfilter gives.
 */
#include "meshcap.h"
#include "sockopt_guard.h"

/* Puts struct mc_origdst_ext into this object's BTF, so that bpf2go generates its Go type (the proxy's decoder of
 * the extended answer comes from it). No program uses it; the loader drops the section it lands in. */
const struct mc_origdst_ext *mc_origdst_ext_btf __attribute__((unused));
const struct mc_stats_answer *mc_stats_answer_btf __attribute__((unused));

/* The one netns-cookie read of this program type (bpf_get_netns_cookie: sockopt programs have it from 5.15;
 * before, mc_sk_netns: sock_create's record, a listener's cloned, or sockops's BTF read for a proxy socket). */
static __always_inline __u64 mc_sockopt_netns(struct bpf_sockopt *ctx)
{
	if (mc_netns_from_storage)
		return mc_stored_netns(ctx->sk);
	return bpf_get_netns_cookie(ctx);
}

/* MC_SO_CAPTURE_STATS: the counters of the pod the socket belongs to (its config key). */
static __always_inline int mc_stats_answer(struct bpf_sockopt *ctx)
{
	__u64 cfg_key;
	struct mc_config *cfg = mc_lookup_config(mc_sockopt_netns(ctx), &cfg_key);
	if (!cfg)
		return 1;
	struct mc_stats *st = bpf_map_lookup_elem(&mc_stats, &cfg_key);
	struct mc_stats_answer *a = ctx->optval;
	if (!st || (void *)(a + 1) > ctx->optval_end)
		return 1;
	a->conns = st->conns;
	a->tuples = st->tuples;
	a->captured = st->captured;
	a->exempt_port = st->exempt_port;
	a->exempt_owner = st->exempt_owner;
	a->exempt_loopback = st->exempt_loopback;
	a->exempt_cidr = st->exempt_cidr;
	a->not_included = st->not_included;
	a->refused_full = st->refused_full;
	a->tuple_lost = st->tuple_lost;
	a->max_conns = cfg->max_conns;
	a->_pad = 0;
	mc_answer(ctx, sizeof(*a));
	return 1;
}

/* SOL_IPV6/IP6T_SO_ORIGINAL_DST on the proxy's accepted IPv6 socket: the sockaddr_in6 netfilter gives after an
 * ip6tables REDIRECT, from mc_orig_tuple6 (native IPv6 connections connect6 captured). */
static __always_inline int mc_origdst6_answer(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->family != AF_INET6 || sk->protocol != IPPROTO_TCP)
		return 1;
	struct mc_tuple6 t;
	__builtin_memset(&t, 0, sizeof(t));
	t.netns = mc_sockopt_netns(ctx);
	if (!t.netns)
		return 1; /* unknown netns: never a key */
	for (int i = 0; i < 4; i++) {
		t.local_addr[i] = sk->src_ip6[i];
		t.remote_addr[i] = sk->dst_ip6[i];
	}
	t.local_port = (__u16)sk->src_port;
	t.remote_port = bpf_ntohs(sk->dst_port);
	struct mc_orig6 *orig = bpf_map_lookup_elem(&mc_orig_tuple6, &t);
	struct mc_sockaddr_in6 *sa = ctx->optval;
	if (!orig || (void *)(sa + 1) > ctx->optval_end)
		return 1; /* not a captured connection, or a buffer too small: the kernel's answer stands */
	sa->sin6_family = AF_INET6;
	sa->sin6_port = bpf_htons(orig->port);
	sa->sin6_flowinfo = 0;
	for (int i = 0; i < 4; i++)
		sa->sin6_addr[i] = orig->addr[i];
	sa->sin6_scope_id = 0;
	mc_answer(ctx, sizeof(*sa));
	return 1;
}

/* Answers the options this program owns; leaves every other answer as the kernel gave it. */
static __always_inline int mc_getsockopt_answer(struct bpf_sockopt *ctx)
{
	if (ctx->level == SOL_IP && ctx->optname == MC_SO_CAPTURE_STATS)
		return mc_stats_answer(ctx);
	if (ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST)
		return mc_origdst6_answer(ctx);
	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)
		return 1; /* untouched: keep the kernel's optlen and retval */

	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->family != AF_INET || sk->protocol != IPPROTO_TCP)
		return 1;

	__u64 netns = mc_sockopt_netns(ctx);
	if (!netns)
		return 1; /* unknown netns: never a key */
	struct mc_tuple t;
	mc_fill_tuple(&t, netns, sk->src_ip4, (__u16)sk->src_port, sk->dst_ip4,
	              bpf_ntohs(sk->dst_port));
	struct mc_orig *orig = bpf_map_lookup_elem(&mc_orig_tuple, &t);
	if (!orig)
		return 1; /* not a captured connection: whatever the kernel said stands */

	struct mc_sockaddr_in *sa = ctx->optval;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1; /* user buffer smaller than a sockaddr_in: let the kernel's answer stand */

	sa->sin_family = AF_INET;
	sa->sin_port = bpf_htons(orig->port);
	sa->sin_addr = orig->addr;
	__builtin_memset(sa->sin_zero, 0, sizeof(sa->sin_zero));

	int optlen = sizeof(*sa);
	struct mc_origdst_ext *ext = ctx->optval;
	if ((orig->flags & MC_ORIG_F_PROXY_IN) && (void *)(ext + 1) <= ctx->optval_end) {
		ext->flags = MC_ORIGDST_F_FAST_PATH;
		optlen = sizeof(*ext);
	}
	/* Override whatever the kernel answered (ENOENT without conntrack, or the local address with it). */
	mc_answer(ctx, optlen);
	return 1;
}

SEC("cgroup/getsockopt")
int mc_getsockopt(struct bpf_sockopt *ctx)
{
	mc_getsockopt_answer(ctx);
	return mc_sockopt_keep_large(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
