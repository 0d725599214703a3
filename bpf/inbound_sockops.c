// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops on the pod's cgroup, inbound side (attached next to the outbound sockops program, never replacing it):
 *
 *   TCP_LISTEN_CB of a socket inbound_bind.c marked -> it becomes the sidecar listener (inb_listener, the slot of
 *                                                      its family)
 *   PASSIVE_ESTABLISHED_CB of a steered connection   -> ask for state callbacks
 *   STATE_CB to TCP_CLOSE                            -> forget it in inb_steered
 *
 * This is what makes inbound capture independent of the sidecar: whichever exempt process listens on -z, whenever
 * (after init exited, after a restart, another binary), it is registered at listen() with no registration call and
 * no meshcap process in the pod. The newest listener wins; a closed one leaves the sockmap by itself (the kernel),
 * and captured ports are then refused. Inserting a listening socket from sockops needs Linux 5.7.
 */
#include "inbound.h"

static __always_inline void inb_listening(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	if (!bpf_map_lookup_elem(&inb_exempt_bound, &cookie))
		return; /* not bound to -z by an exempt process (or by another netns's objects) */
	bpf_map_delete_elem(&inb_exempt_bound, &cookie);
	__u32 slot = skops->family == AF_INET6 ? INB_SLOT_INET6 : INB_SLOT_INET;
	/* Fails for a socket a sockmap cannot hold (MPTCP): captured ports then stay refused (fail closed). */
	if (bpf_sock_map_update(skops, &inb_listener, &slot, BPF_ANY) == 0)
		inb_count(INB_STAT_REGISTERED);
}

/* The IPv4 steered-connection key of this socket; 0 if it cannot be one (IPv6 that is not IPv4-mapped). */
static __always_inline int inb_fill_tuple(struct inb_tuple *t, struct bpf_sock_ops *skops)
{
	/* Why volatile: clang merges adjacent 4-byte context loads into one 8-byte load, which the verifier rejects. */
	if (skops->family == AF_INET) {
		t->local_addr = *(volatile __u32 *)&skops->local_ip4;
		t->remote_addr = *(volatile __u32 *)&skops->remote_ip4;
	} else if (skops->family == AF_INET6) {
		/* A dual-stack listener's IPv4 connections: ::ffff:a.b.c.d, the IPv4 address in the last word. */
		__u32 w0 = skops->local_ip6[0], w1 = skops->local_ip6[1], w2 = skops->local_ip6[2];
		if (w0 || w1 || w2 != bpf_htonl(0xffff))
			return 0;
		t->local_addr = skops->local_ip6[3];
		t->remote_addr = skops->remote_ip6[3];
	} else {
		return 0;
	}
	t->local_port = (__u16) * (volatile __u32 *)&skops->local_port;                /* host order */
	t->remote_port = (__u16)bpf_ntohl(*(volatile __u32 *)&skops->remote_port);     /* network order, in a u32 */
	return 1;
}

/* The IPv6 twin for a native IPv6 connection; 0 for anything else. */
static __always_inline int inb_fill_tuple6(struct inb_tuple6 *t, struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET6)
		return 0;
	__u32 w0 = skops->local_ip6[0], w1 = skops->local_ip6[1], w2 = skops->local_ip6[2];
	if (!w0 && !w1 && w2 == bpf_htonl(0xffff))
		return 0; /* IPv4-mapped: inb_fill_tuple's */
	t->local_addr[0] = w0;
	t->local_addr[1] = w1;
	t->local_addr[2] = w2;
	t->local_addr[3] = skops->local_ip6[3];
	t->remote_addr[0] = skops->remote_ip6[0];
	t->remote_addr[1] = skops->remote_ip6[1];
	t->remote_addr[2] = skops->remote_ip6[2];
	t->remote_addr[3] = skops->remote_ip6[3];
	t->local_port = (__u16) * (volatile __u32 *)&skops->local_port;
	t->remote_port = (__u16)bpf_ntohl(*(volatile __u32 *)&skops->remote_port);
	return 1;
}

/* Is this accepted connection one sk_lookup steered? */
static __always_inline int inb_was_steered(struct bpf_sock_ops *skops)
{
	struct inb_tuple t;
	struct inb_tuple6 t6;

	if (inb_fill_tuple(&t, skops))
		return bpf_map_lookup_elem(&inb_steered, &t) != 0;
	__builtin_memset(&t6, 0, sizeof(t6));
	return inb_fill_tuple6(&t6, skops) && bpf_map_lookup_elem(&inb_steered6, &t6);
}

/* A steered connection closed: its SO_ORIGINAL_DST entry goes. */
static __always_inline void inb_forget(struct bpf_sock_ops *skops)
{
	struct inb_tuple t;
	struct inb_tuple6 t6;

	if (inb_fill_tuple(&t, skops)) {
		bpf_map_delete_elem(&inb_steered, &t);
		return;
	}
	__builtin_memset(&t6, 0, sizeof(t6));
	if (inb_fill_tuple6(&t6, skops))
		bpf_map_delete_elem(&inb_steered6, &t6);
}

SEC("sockops")
int inb_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		inb_listening(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (inb_was_steered(skops))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == TCP_CLOSE)
			inb_forget(skops);
		break;
	}
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
