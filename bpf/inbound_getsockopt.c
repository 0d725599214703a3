// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getsockopt, inbound side: getsockopt(SOL_IP, SO_ORIGINAL_DST) on a connection sk_lookup steered to the
 * sidecar answers its original destination, as iptables REDIRECT does. With sk_lookup nothing was rewritten, so the
 * original destination is the accepted socket's own local address.
 *
 * Attached next to the outbound getsockopt program. It answers only when nothing earlier did (ctx->retval != 0:
 * the kernel said ENOENT, no conntrack) and the socket is in inb_steered; everything else is left alone.
 */
#include "inbound.h"
#include "sockopt_guard.h"

/* One load of a struct bpf_sock field, pinned where it is written. Why: the verifier forbids pointer arithmetic on
 * a socket pointer, and without the barrier clang sinks the loads of both branches into one load from a computed
 * address (sk + 52 or sk + 68). */
#define inb_sk_load(sk, field)                          \
	({                                              \
		__u32 __v = (sk)->field;                \
		asm volatile("" : "+r"(__v));           \
		__v;                                    \
	})

/* SOL_IPV6/IP6T_SO_ORIGINAL_DST on a native IPv6 connection sk_lookup steered: the sockaddr_in6 ip6tables
 * REDIRECT answers, here the socket's own local address. */
static __always_inline int inb_getsockopt_answer6(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->protocol != IPPROTO_TCP || sk->family != AF_INET6)
		return 1;
	struct inb_tuple6 t = {
		.local_port = (__u16)sk->src_port,
		.remote_port = bpf_ntohs(sk->dst_port),
	};
	t.local_addr[0] = inb_sk_load(sk, src_ip6[0]);
	t.local_addr[1] = inb_sk_load(sk, src_ip6[1]);
	t.local_addr[2] = inb_sk_load(sk, src_ip6[2]);
	t.local_addr[3] = inb_sk_load(sk, src_ip6[3]);
	t.remote_addr[0] = inb_sk_load(sk, dst_ip6[0]);
	t.remote_addr[1] = inb_sk_load(sk, dst_ip6[1]);
	t.remote_addr[2] = inb_sk_load(sk, dst_ip6[2]);
	t.remote_addr[3] = inb_sk_load(sk, dst_ip6[3]);
	if (!bpf_map_lookup_elem(&inb_steered6, &t))
		return 1;

	struct mc_sockaddr_in6 *sa = ctx->optval;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1; /* buffer smaller than a sockaddr_in6: the kernel's error stands */
	__builtin_memset(sa, 0, sizeof(*sa));
	sa->sin6_family = AF_INET6;
	sa->sin6_port = bpf_htons(t.local_port);
	sa->sin6_addr[0] = t.local_addr[0];
	sa->sin6_addr[1] = t.local_addr[1];
	sa->sin6_addr[2] = t.local_addr[2];
	sa->sin6_addr[3] = t.local_addr[3];
	mc_answer(ctx, sizeof(*sa));
	inb_count(INB_STAT_ORIGDST);
	return 1;
}

/* Answers SO_ORIGINAL_DST for a steered connection; leaves every other answer as it was. */
static __always_inline int inb_getsockopt_answer(struct bpf_sockopt *ctx)
{
	if (ctx->retval == 0)
		return 1; /* already answered (outbound program, or conntrack's own answer) */
	if (ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST)
		return inb_getsockopt_answer6(ctx);
	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)
		return 1; /* not ours */

	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;

	struct inb_tuple t = {
		.local_port = (__u16)sk->src_port,      /* host order */
		.remote_port = bpf_ntohs(sk->dst_port), /* network order */
	};
	if (sk->family == AF_INET) {
		t.local_addr = inb_sk_load(sk, src_ip4);
		t.remote_addr = inb_sk_load(sk, dst_ip4);
	} else if (sk->family == AF_INET6) {
		/* A dual-stack listener (Go's and many proxies' default for 0.0.0.0) accepts IPv4 as ::ffff:a.b.c.d
		 * (::ffff:0:0/96). */
		__u32 w0 = inb_sk_load(sk, src_ip6[0]), w1 = inb_sk_load(sk, src_ip6[1]), w2 = inb_sk_load(sk, src_ip6[2]);
		if (w0 || w1 || w2 != bpf_htonl(0xffff))
			return 1;
		t.local_addr = inb_sk_load(sk, src_ip6[3]);
		t.remote_addr = inb_sk_load(sk, dst_ip6[3]);
	} else {
		return 1;
	}
	if (!bpf_map_lookup_elem(&inb_steered, &t))
		return 1;

	struct mc_sockaddr_in *sa = ctx->optval;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1; /* buffer smaller than a sockaddr_in: the kernel's error stands */
	sa->sin_family = AF_INET;
	sa->sin_port = bpf_htons(t.local_port);
	sa->sin_addr = t.local_addr;
	__builtin_memset(sa->sin_zero, 0, sizeof(sa->sin_zero));
	mc_answer(ctx, sizeof(*sa));
	inb_count(INB_STAT_ORIGDST);
	return 1;
}

SEC("cgroup/getsockopt")
int inb_getsockopt(struct bpf_sockopt *ctx)
{
	inb_getsockopt_answer(ctx);
	return mc_sockopt_keep_large(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
