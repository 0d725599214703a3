// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_lookup: inbound capture. Attached to a pod's network namespace, it runs when the kernel looks for a
 * listening socket for a packet that matched no established socket (in practice: a SYN). For a captured port it
 * hands the lookup the proxy's listener (-z, normally 15006) instead, so the proxy accepts a connection whose
 * local address is still the original destination: no NAT, no conntrack, getsockname() is the answer.
 *
 * The decision mirrors istio's nat ISTIO_INBOUND chain (istio-golden/DEFAULTS.md section 5, items 4 and 7):
 *   -b empty                      -> nothing captured (istio adds no PREROUTING jump)
 *   --dport -e (tunnel, 15008)    -> RETURN, whatever -b says (always the first ISTIO_INBOUND rule)
 *   -b '*':  --dport in -d        -> RETURN;   otherwise -> REDIRECT to -z
 *   -b list: --dport in -b        -> REDIRECT; otherwise -> not captured (-d is ignored)
 * plus what istio gets from where its rules sit (PREROUTING never sees the conntrack-NATed loopback flows):
 *   source or destination in 127/8 -> never steered: the sidecar's own 127.0.0.6 passthrough to the app and
 *                                     local app-to-app traffic must reach the app; IPv6: ::1 on either side
 *                                     and the passthrough source ::6; the pod calling its own address;
 *   destination port -z           -> not steered: the normal lookup finds the same listener.
 *
 * Failure mode is closed, like istio: a captured port with no proxy listener registered (proxy not started, or
 * exited: the kernel removes a closed socket from the sockmap) is refused with a RST, never delivered to the app
 * behind the proxy's back. Who fills inb_listener: inbound_sockops.c (any exempt listener, by itself).
 *
 * IPv6 lookups are decided the same way, with the same ports, only in a pod with IPv6 enabled (INB_F_IPV6: istio
 * writes ip6tables rules only then); they go to the sidecar's IPv6 listener ([::]:15006), or to a dual-stack one.
 *
 * A steered connection is remembered in inb_steered (IPv4) or inb_steered6, so that inbound_getsockopt.c can answer
 * SO_ORIGINAL_DST. UDP lookups are left to the kernel (docs/inbound.md, limits).
 */
#include "inbound.h"

/* 127.0.0.0/8, address in network byte order. */
static __always_inline int inb_is_loopback4(__u32 addr)
{
	return (addr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
}

/* Would istio's ISTIO_INBOUND chain send this destination port to ISTIO_IN_REDIRECT? */
static __always_inline int inb_port_captured(const struct inb_config *cfg, __u16 port)
{
	/* The tunnel port comes first and wins over any -b list (istio's unconditional first RETURN). */
	if (port == cfg->tunnel_port || port == cfg->capture_port)
		return 0;

	__u8 *verdict = bpf_map_lookup_elem(&inb_ports, &port);
	if (verdict)
		return *verdict == INB_PORT_CAPTURE;
	return (cfg->flags & INB_F_ALL_PORTS) != 0;
}

/* Try the listener in slot: 0 when assigned, 1 when the slot is empty, -1 when the socket cannot take this lookup
 * (bpf_sk_assign refused it, e.g. an IPv6-only listener for IPv4). */
static __always_inline int inb_try_slot(struct bpf_sk_lookup *ctx, __u32 slot)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&inb_listener, &slot);

	if (!sk)
		return 1;
	/* flags 0: if the proxy's listener is in a SO_REUSEPORT group (envoy's per-worker listeners), the kernel
	 * still picks a group member, so registering any one of them spreads load over all. */
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
}

/* Hand the lookup to the proxy's listener (the one of its own family first, then the other one: a dual-stack
 * listener serves both), or refuse the connection if none can take it. */
static __always_inline int inb_assign(struct bpf_sk_lookup *ctx)
{
	__u32 first = ctx->family == AF_INET6 ? INB_SLOT_INET6 : INB_SLOT_INET;
	int r1 = inb_try_slot(ctx, first);
	if (r1 == 0)
		return SK_PASS;
	int r2 = inb_try_slot(ctx, first ^ 1);
	if (r2 == 0)
		return SK_PASS;
	if (r1 > 0 && r2 > 0) {
		/* Fail closed: the proxy is not (or no longer) listening. SK_DROP makes the lookup find no socket,
		 * so TCP answers the SYN with a RST: "connection refused", as istio's REDIRECT to a closed 15006. */
		inb_count(INB_STAT_DROP_NO_LISTENER);
	} else {
		/* a listener of the wrong family or protocol: refusing is the only answer that cannot bypass the proxy */
		inb_count(INB_STAT_DROP_ASSIGN);
	}
	return SK_DROP;
}

/* Remember a steered connection for SO_ORIGINAL_DST (inbound_getsockopt.c). */
static __always_inline void inb_remember(struct bpf_sk_lookup *ctx)
{
	__u8 one = 1;
	__u16 lport = (__u16)ctx->local_port;              /* host order */
	__u16 rport = bpf_ntohs((__u16)ctx->remote_port);  /* network order in the context */

	if (ctx->family == AF_INET6) {
		struct inb_tuple6 t6 = {.local_port = lport, .remote_port = rport};
		for (int i = 0; i < 4; i++) {
			t6.local_addr[i] = ctx->local_ip6[i];
			t6.remote_addr[i] = ctx->remote_ip6[i];
		}
		bpf_map_update_elem(&inb_steered6, &t6, &one, BPF_ANY);
		return;
	}
	struct inb_tuple t = {
		.local_addr = ctx->local_ip4,
		.remote_addr = ctx->remote_ip4,
		.local_port = lport,
		.remote_port = rport,
	};
	bpf_map_update_elem(&inb_steered, &t, &one, BPF_ANY);
}

static __always_inline int inb_steer(struct bpf_sk_lookup *ctx)
{
	if (inb_assign(ctx) != SK_PASS)
		return SK_DROP;
	inb_remember(ctx);
	inb_count(INB_STAT_STEERED);
	return SK_PASS;
}

/* ::<last> (::1, ::6), words in network order. */
static __always_inline int inb_is_ip6(const __u32 *a, __u32 last)
{
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(last);
}

/* "Inside the pod", never steered. IPv4: 127/8 on either side, which also covers the sidecar's passthrough source
 * 127.0.0.6. IPv6: ::1 on either side, and the passthrough source ::6 (istio's ip6tables twin of 127.0.0.6), from
 * which the sidecar connects to the app at the pod's IPv6 address. Both families: the pod calling its own address
 * (the kernel picks the destination itself as the source of a local route). istio's rules never redirect that
 * inbound (the flow is NATed, if at all, in OUTPUT): an app's call goes straight to the app (rule 11b), and the
 * proxy uid's own call is sent to -z by connect4/connect6 already (rule 11a, bpf/include/outbound.h). */
static __always_inline int inb_local_flow(struct bpf_sk_lookup *ctx)
{
	if (ctx->family == AF_INET)
		return inb_is_loopback4(ctx->remote_ip4) || inb_is_loopback4(ctx->local_ip4) ||
		       ctx->remote_ip4 == ctx->local_ip4;
	__u32 r[4], l[4];
	for (int i = 0; i < 4; i++) {
		r[i] = ctx->remote_ip6[i];
		l[i] = ctx->local_ip6[i];
	}
	return inb_is_ip6(r, 1) || inb_is_ip6(l, 1) || inb_is_ip6(r, 6) ||
	       (r[0] == l[0] && r[1] == l[1] && r[2] == l[2] && r[3] == l[3]);
}

SEC("sk_lookup")
int inb_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP || (ctx->family != AF_INET && ctx->family != AF_INET6))
		return SK_PASS;

	struct inb_config *cfg = inb_config();
	if (!cfg)
		return SK_PASS;
	/* istio writes the IPv6 twin of ISTIO_INBOUND only in a pod with IPv6 enabled */
	if (ctx->family == AF_INET6 && !(cfg->flags & INB_F_IPV6))
		return SK_PASS;

	/* Loopback on either side means "inside the pod": the sidecar's passthrough (127.0.0.6 or ::6 -> pod
	 * IP:port) and app-local traffic. Steering those would loop the proxy into itself. */
	if (inb_local_flow(ctx)) {
		inb_count(INB_STAT_PASS_LOOPBACK);
		return SK_PASS;
	}

	if (!inb_port_captured(cfg, (__u16)ctx->local_port)) {
		inb_count(INB_STAT_PASS_PORT);
		return SK_PASS;
	}
	return inb_steer(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
