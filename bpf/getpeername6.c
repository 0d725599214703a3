// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getpeername6: an AF_INET6 client that connect6 captured (an IPv4-mapped destination) asking getpeername()
 * sees ::ffff:<original destination>, not the proxy listener ::ffff:127.0.0.1 it was rewritten to (the twin of
 * getpeername4). connect6 records only IPv4-mapped destinations, so the record's address is IPv4.
 */
#include "meshcap.h"

SEC("cgroup/getpeername6")
int mc_getpeername6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return SYS_PROCEED;
	struct mc_client *cl = bpf_sk_storage_get(&mc_client, sk, 0, 0);
	if (!cl || !(cl->flags & MC_CL_F_COUNTED))
		return SYS_PROCEED;

	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0xffff);
	ctx->user_ip6[3] = cl->orig.addr;
	ctx->user_port = bpf_htons(cl->orig.port);
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
