// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getpeername6: an AF_INET6 client that connect6 captured asking getpeername() sees the destination it
 * connected to, not the proxy listener it was rewritten to (the twin of getpeername4): ::ffff:<IPv4 destination>
 * for an IPv4-mapped one, the IPv6 destination (mc_dst6) for a native one.
 */
#include "meshcap.h"
#include "dns.h"

SEC("cgroup/getpeername6")
int mc_getpeername6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct mc_client *cl = mc_captured_client(sk);
	if (!cl) {
		mc_dns_restore6(ctx); /* a socket whose DNS connect was captured (bpf/include/dns.h) */
		return SYS_PROCEED;
	}

	if (cl->flags & MC_CL_F_IPV6) {
		struct mc_dst6 *d6 = bpf_sk_storage_get(&mc_dst6, sk, 0, 0);
		if (!d6)
			return SYS_PROCEED;
		ctx->user_ip6[0] = d6->addr[0];
		ctx->user_ip6[1] = d6->addr[1];
		ctx->user_ip6[2] = d6->addr[2];
		ctx->user_ip6[3] = d6->addr[3];
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = cl->orig.addr;
	}
	ctx->user_port = bpf_htons(cl->orig.port);
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
