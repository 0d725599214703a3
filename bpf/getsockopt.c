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

/* Puts struct mc_origdst_ext into this object's BTF, so that bpf2go generates its Go type (the proxy's decoder of
 * the extended answer comes from it). No program uses it; the loader drops the section it lands in. */
const struct mc_origdst_ext *mc_origdst_ext_btf __attribute__((unused));

/* The one netns-cookie read of this program type (bpf_get_netns_cookie: sockopt programs have it from 5.15). */
static __always_inline __u64 mc_sockopt_netns(struct bpf_sockopt *ctx)
{
	return bpf_get_netns_cookie(ctx);
}

SEC("cgroup/getsockopt")
int mc_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)
		return 1; /* untouched: keep the kernel's optlen and retval */

	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->family != AF_INET || sk->protocol != IPPROTO_TCP)
		return 1;

	struct mc_tuple t;
	mc_fill_tuple(&t, mc_sockopt_netns(ctx), sk->src_ip4, (__u16)sk->src_port, sk->dst_ip4,
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
	ctx->optlen = optlen;
	/* Why the barrier: clang 14 merges the optlen and retval stores into one 8-byte store, which the verifier
	 * rejects (invalid bpf_context access off=32 size=8). */
	asm volatile("" ::: "memory");
	/* Override whatever the kernel answered (ENOENT without conntrack, or the local address with it). */
	ctx->retval = 0;
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
