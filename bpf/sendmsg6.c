// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/sendmsg6: DNS capture of unconnected UDP from AF_INET6 sockets: a native IPv6 server (in a pod with IPv6
 * enabled) goes to [::1]:<DNS port>, an IPv4-mapped one, decided with the IPv4 list, to ::ffff:127.0.0.1:<DNS port>
 * (bpf/include/dns.h).
 */
#include "dns.h"

SEC("cgroup/sendmsg6")
int mc_sendmsg6(struct bpf_sock_addr *ctx)
{
	return mc_dns6(ctx, 0) == MC_DNS_REFUSE ? 0 : SYS_PROCEED; /* 0: EPERM, the datagram is not sent */
}

char _license[] SEC("license") = "Dual BSD/GPL";
