// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getpeername4: a captured client asking getpeername() sees the destination it connected to, not the proxy
 * listener (127.0.0.1:15001) connect4 rewrote it to. With iptables REDIRECT the client never sees the rewrite
 * (NAT is undone on the reply path); this keeps that behaviour.
 */
#include "meshcap.h"
#include "dns.h"

SEC("cgroup/getpeername4")
int mc_getpeername4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct mc_client *cl = mc_captured_client(sk);
	if (!cl) {
		mc_dns_restore4(ctx); /* a socket whose DNS connect was captured (bpf/include/dns.h) */
		return SYS_PROCEED;
	}

	ctx->user_ip4 = cl->orig.addr;
	ctx->user_port = bpf_htons(cl->orig.port);
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
