// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4: outbound capture. A TCP connect() from a process in the attached cgroup is rewritten to
 * 127.x.y.z:<proxy_port> (x.y.z from the destination, see mc_proxy_addr4) unless exempt, and the original
 * destination is recorded in the socket's storage.
 *
 * The decision mirrors istio's nat ISTIO_OUTPUT chain, in the same order and with the same meaning
 * (istio-golden/DEFAULTS.md section 5):
 *   9.  -o port                          -> RETURN (not captured, for everyone)
 *   10. over lo from 127.0.0.6            -> RETURN (the sidecar's inbound passthrough)
 *   11a/12a. owner in -u/-g, over lo, not to the loopback CIDR or -e port -> the inbound port (ISTIO_IN_REDIRECT)
 *   11b/12b. over lo, another owner       -> RETURN (127/8, 0.0.0.0, the pod's own addresses)
 *   11c/12c. owner uid in -u / gid in -g  -> RETURN (the proxy's own traffic goes direct)
 *   15. loopback CIDR                     -> RETURN
 *   16. -x CIDR                           -> RETURN
 *   17. -q port                           -> REDIRECT
 *   18. -i CIDR, or -i '*'                -> REDIRECT
 *   otherwise                             -> not captured
 * UDP (and anything that is not TCP) is only touched by DNS capture (bpf/include/dns.h), decided first. Each outcome is counted per pod (struct mc_stats).
 * The decision itself lives in bpf/include/outbound.h (shared with connect6.c for IPv4-mapped destinations).
 *
 * Fail closed: a captured connect takes one slot of the pod's capacity (mc_config.max_conns) and records its
 * original destination in the socket's own storage (mc_client) before it is rewritten. When the pod is at capacity,
 * or the record cannot be made, the connect is refused (EPERM) and counted: it is never let through uncaptured and
 * never sent to the proxy without a destination. The slot is given back when the socket is released
 * (sockrelease.c), whatever happened to the connection.
 */
#include "outbound.h"
#include "dns.h"

SEC("cgroup/connect4")
int mc_connect4(struct bpf_sock_addr *ctx)
{
	/* DNS (TCP and connected UDP to port 53) first: bpf/include/dns.h */
	int dns = mc_dns4(ctx, 1);
	if (dns != MC_DNS_PASS)
		return dns == MC_DNS_REFUSE ? 0 : SYS_PROCEED;
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return SYS_PROCEED;

	struct mc_dest d;
	mc_dest4(ctx, &d);
	struct bpf_sock *sk = ctx->sk;
	if (sk)
		d.src[0] = sk->src_ip4;
	mc_resolve_unspecified(&d);
	__u16 proxy_port = 0;
	int out = mc_outbound(ctx, &d, &proxy_port);
	if (out == MC_OUT_REFUSE)
		return 0; /* EPERM */
	if (out == MC_OUT_CAPTURE) {
		ctx->user_ip4 = mc_proxy_addr4(ctx, &d, proxy_port);
		ctx->user_port = bpf_htons(proxy_port);
	}
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
