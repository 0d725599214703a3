// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/recvmsg4: the source of a UDP answer from the DNS proxy (127.0.0.1:<DNS port>) to a socket whose DNS was
 * captured becomes the server the socket asked (bpf/include/dns.h), as iptables' NAT shows it: resolvers (glibc,
 * musl) drop answers whose source is not a nameserver they asked.
 */
#include "dns.h"

SEC("cgroup/recvmsg4")
int mc_recvmsg4(struct bpf_sock_addr *ctx)
{
	mc_dns_restore4(ctx);
	return SYS_PROCEED; /* recvmsg programs must return 1 */
}

char _license[] SEC("license") = "Dual BSD/GPL";
