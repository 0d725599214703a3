// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect6: outbound capture of AF_INET6 sockets, with the decision connect4 uses (bpf/include/outbound.h).
 *
 * IPv4-mapped destinations (::ffff:a.b.c.d, what Java and many runtimes use for every IPv4 peer) are IPv4 on the
 * wire, and istio's iptables rules capture them in every pod: they are decided with the IPv4 policy exactly as
 * connect4 decides a.b.c.d (exemptions, counters, capacity, client record) and rewritten to
 * ::ffff:127.x.y.z:<proxy_port> (mc_proxy_addr4). The proxy's accepted socket is then an ordinary IPv4 one on 127.0.0.1, so sockops
 * and getsockopt answer for it as for connect4; getpeername6 restores the mapped destination for the app.
 *
 * Native IPv6 destinations are captured only in a pod with IPv6 enabled (MC_F_IPV6, istio's rule for writing
 * ip6tables rules), with the IPv6 lists (-i/-x IPv6 CIDRs), the same -o/-q ports and owners, ::1 as loopback, and
 * rewritten to [::1]:<proxy_port> (the proxy's IPv6 outbound listener, as Envoy's in a dual-stack pod). sockops
 * records them in mc_orig_tuple6 and getsockopt answers SOL_IPV6/IP6T_SO_ORIGINAL_DST.
 */
#include "outbound.h"
#include "dns.h"

SEC("cgroup/connect6")
int mc_connect6(struct bpf_sock_addr *ctx)
{
	/* DNS (TCP and connected UDP to port 53) first: bpf/include/dns.h */
	int dns = mc_dns6(ctx, 1);
	if (dns != MC_DNS_PASS)
		return dns == MC_DNS_REFUSE ? 0 : SYS_PROCEED;
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return SYS_PROCEED;

	struct mc_dest d;
	int mapped = 0;
	mc_dest6(ctx, &d, &mapped);
	struct bpf_sock *sk = ctx->sk;
	if (mapped) {
		if (sk && mc_is_v4mapped(sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2]))
			d.src[0] = sk->src_ip6[3];
	} else if (sk) {
		d.src[0] = sk->src_ip6[0];
		d.src[1] = sk->src_ip6[1];
		d.src[2] = sk->src_ip6[2];
		d.src[3] = sk->src_ip6[3];
	}
	mc_resolve_unspecified(&d);

	__u16 proxy_port = 0;
	int out = mc_outbound(ctx, &d, &proxy_port);
	if (out == MC_OUT_REFUSE)
		return 0; /* EPERM */
	if (out != MC_OUT_CAPTURE)
		return SYS_PROCEED;
	/* ::ffff:127.x.y.z for a mapped destination (as connect4), ::1 for a native one: IPv6 has one loopback
	 * address, so native IPv6 captured connections share one 4-tuple space per proxy port. */
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = mapped ? mc_proxy_addr4(ctx, &d, proxy_port) : bpf_htonl(1);
	ctx->user_port = bpf_htons(proxy_port);
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
