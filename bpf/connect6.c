// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect6: outbound capture of AF_INET6 sockets. A TCP connect() to an IPv4-mapped destination
 * (::ffff:a.b.c.d, what Java and many runtimes use for every IPv4 peer) is IPv4 on the wire, and istio's iptables
 * rules capture it: it is decided with the IPv4 policy exactly as connect4 decides a.b.c.d (the same exemptions,
 * counters, capacity and client record, bpf/include/outbound.h) and rewritten to ::ffff:127.0.0.1:<proxy_port>.
 * The proxy's accepted socket is then an ordinary IPv4 one on 127.0.0.1:<proxy_port>, so sockops and getsockopt
 * answer for it as for connect4, and getpeername6 restores the mapped destination for the app.
 *
 * Native IPv6 destinations are left alone: eBPF mode does not capture IPv6 yet, and pkg/capture refuses eBPF for
 * a pod with IPv6 addresses (istio writes ip6tables rules only for such pods), so nothing is silently bypassed.
 */
#include "outbound.h"

SEC("cgroup/connect6")
int mc_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return SYS_PROCEED;

	/* Why volatile: one 4-byte context load per word (the verifier checks the access size of user_ip6). */
	__u32 w0 = *(volatile __u32 *)&ctx->user_ip6[0];
	__u32 w1 = *(volatile __u32 *)&ctx->user_ip6[1];
	__u32 w2 = *(volatile __u32 *)&ctx->user_ip6[2];
	__u32 w3 = *(volatile __u32 *)&ctx->user_ip6[3];
	if (!mc_is_v4mapped(w0, w1, w2)) {
		struct bpf_sock *sk = ctx->sk;
		if (sk) /* a re-connect after a failed captured one: drop its record, as connect4 does for an exempt one */
			mc_forget(sk);
		return SYS_PROCEED;
	}

	__u16 proxy_port = 0;
	int out = mc_outbound_v4(ctx, w3, bpf_ntohs((__u16)ctx->user_port), &proxy_port);
	if (out == MC_OUT_REFUSE)
		return 0; /* EPERM */
	if (out == MC_OUT_CAPTURE) { /* ::ffff:127.0.0.1 */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(proxy_port);
	}
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
