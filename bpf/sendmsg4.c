// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/sendmsg4: DNS capture of unconnected UDP (sendto/sendmsg with an address), including the IPv4-mapped sends
 * of AF_INET6 sockets, which the kernel hands to the IPv4 path. A datagram to port 53 of a listed server (any port
 * 53 with --capture-all-dns) goes to 127.0.0.1:<DNS port>, unless istio's -o or owner rules exempt it; the server
 * is recorded for recvmsg4/recvmsg6 (bpf/include/dns.h). Connected UDP never comes here: connect4 rewrote its peer.
 */
#include "dns.h"

SEC("cgroup/sendmsg4")
int mc_sendmsg4(struct bpf_sock_addr *ctx)
{
	return mc_dns4(ctx, 0) == MC_DNS_REFUSE ? 0 : SYS_PROCEED; /* 0: EPERM, the datagram is not sent */
}

char _license[] SEC("license") = "Dual BSD/GPL";
