// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops: turns "socket cookie -> original destination" (from connect4) into "4-tuple -> original destination"
 * that the proxy can find from its accepted socket, and removes entries when sockets close.
 *
 *   client TCP_CONNECT (captured)   -> ask for state callbacks, so a failed connect also frees the cookie entry
 *   client ACTIVE_ESTABLISHED        -> mc_orig_tuple[(netns, proxy-local, client-addr)] = original destination
 *   proxy PASSIVE_ESTABLISHED        -> if it has an entry, ask for state callbacks
 *   STATE_CB to TCP_CLOSE            -> client: delete cookie entry; proxy side: delete tuple entry
 *
 * Why the tuple entry is freed by the proxy's socket and not the client's: a client may write and close before
 * the proxy has even accepted; its socket reaches TCP_CLOSE (via TIME_WAIT/FIN_WAIT2 minisocks) while the proxy
 * still has to ask SO_ORIGINAL_DST. Both maps are LRU as a backstop (a proxy outside the cgroup, missed events).
 */
#include "meshcap.h"

static __always_inline void mc_proxy_view(struct mc_tuple *t, struct bpf_sock_ops *skops, int active)
{
	/* Why volatile: clang merges adjacent 4-byte context loads (remote_ip4, local_ip4) into one 8-byte load,
	 * which the verifier rejects (invalid bpf_context access off=24 size=8). */
	__u64 netns = bpf_get_netns_cookie(skops);
	__u32 laddr = *(volatile __u32 *)&skops->local_ip4;
	__u16 lport = (__u16) * (volatile __u32 *)&skops->local_port; /* host byte order */
	__u32 raddr = *(volatile __u32 *)&skops->remote_ip4;
	__u16 rport = (__u16)bpf_ntohl(*(volatile __u32 *)&skops->remote_port); /* network order, in a u32 */

	if (active) /* the client's local side is the proxy's remote side */
		mc_fill_tuple(t, netns, raddr, rport, laddr, lport);
	else
		mc_fill_tuple(t, netns, laddr, lport, raddr, rport);
}

static __always_inline void mc_active_established(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct mc_orig *orig = bpf_map_lookup_elem(&mc_orig_cookie, &cookie);
	if (!orig)
		return;

	struct mc_tuple t;
	mc_proxy_view(&t, skops, 1);
	struct mc_orig val = *orig; /* copy: map values must not be passed as keys/values of another map update */
	bpf_map_update_elem(&mc_orig_tuple, &t, &val, BPF_ANY);
}

static __always_inline void mc_passive_established(struct bpf_sock_ops *skops)
{
	struct mc_tuple t;
	mc_proxy_view(&t, skops, 0);
	if (bpf_map_lookup_elem(&mc_orig_tuple, &t))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void mc_closed(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	if (bpf_map_delete_elem(&mc_orig_cookie, &cookie) == 0)
		return; /* it was a captured client socket */

	struct mc_tuple t;
	mc_proxy_view(&t, skops, 0);
	bpf_map_delete_elem(&mc_orig_tuple, &t);
}

SEC("sockops")
int mc_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		__u64 cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_lookup_elem(&mc_orig_cookie, &cookie))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		mc_active_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		mc_passive_established(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == TCP_CLOSE)
			mc_closed(skops);
		break;
	}
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
