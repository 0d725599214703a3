// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/recvmsg6: recvmsg4's twin for AF_INET6 sockets: ::ffff:127.0.0.1 or ::1 at the DNS port becomes the
 * (IPv4-mapped or IPv6) server the socket asked (bpf/include/dns.h).
 */
#include "dns.h"

SEC("cgroup/recvmsg6")
int mc_recvmsg6(struct bpf_sock_addr *ctx)
{
	mc_dns_restore6(ctx);
	return SYS_PROCEED; /* recvmsg programs must return 1 */
}

char _license[] SEC("license") = "Dual BSD/GPL";
