/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A socket's netns cookie read from the kernel's own structs through BTF (CO-RE), for the one program type that
 * can and must: sockops on Linux 5.10 to 5.14, which has no bpf_get_netns_cookie but has bpf_skc_to_tcp_sock.
 * Path: tcp_sock -> sk.__sk_common.skc_net.net -> net_cookie.
 *
 * Why a header of its own: a CO-RE relocation makes the whole program need the kernel's BTF at load time, so only
 * sockops.c's mc_sockops_btf entry point includes this, and the loader loads that program only for the 5.10
 * variant on a kernel with BTF (loader/variant.go). Every other program stays free of relocations.
 *
 * Facts this relies on (measured, docs/kernels.md): the read loads and works in sockops on 5.10; struct net's
 * offsets differ by build (only the relocated ones are used here); net_cookie is an atomic64_t (struct { s64
 * counter; }) on 5.10 and 5.11 and a plain u64 from 5.12 on, 8 bytes at the field's offset either way; on 5.10 a
 * netns gets its cookie only when something first asks bpf_get_netns_cookie for it, so the field reads 0 until
 * then, and 0 is never a key (fail closed).
 */
#ifndef MESHCAP_NETNS_BTF_H
#define MESHCAP_NETNS_BTF_H

#include <bpf/bpf_core_read.h>

/* The kernel structs, reduced to the fields read. preserve_access_index: each offset is relocated against the
 * running kernel at load time; the ___mc suffix is dropped when matching kernel type names. */
struct sock_common___mc {
	struct {
		void *net; /* struct net *; possible_net_t with CONFIG_NET_NS, as every distribution kernel has */
	} skc_net;
} __attribute__((preserve_access_index));

struct sock___mc {
	struct sock_common___mc __sk_common;
} __attribute__((preserve_access_index));

struct inet_sock___mc {
	struct sock___mc sk;
} __attribute__((preserve_access_index));

struct inet_connection_sock___mc {
	struct inet_sock___mc icsk_inet;
} __attribute__((preserve_access_index));

struct tcp_sock___mc {
	struct inet_connection_sock___mc inet_conn;
} __attribute__((preserve_access_index));

/* struct net from 5.12 on: net_cookie is a u64 set when the netns is made. */
struct net___mc_u64 {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

/* struct net on 5.10 and 5.11: net_cookie is an atomic64_t, set the first time it is asked for. */
struct net___mc_atomic {
	struct {
		__s64 counter;
	} net_cookie;
} __attribute__((preserve_access_index));

/* The cookie of sk's netns; 0 when it cannot be read or has not been generated yet. Each flavour's read is
 * relocated only where its field exists (the other becomes dead code the verifier never walks). */
static __always_inline __u64 mc_btf_netns(struct bpf_sock *sk)
{
	if (!sk)
		return 0;
	struct tcp_sock___mc *tp = (struct tcp_sock___mc *)bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	void *net = tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net;
	if (!net)
		return 0;
	if (bpf_core_field_exists(((struct net___mc_atomic *)0)->net_cookie.counter))
		return (__u64)((struct net___mc_atomic *)net)->net_cookie.counter;
	return ((struct net___mc_u64 *)net)->net_cookie;
}

#endif /* MESHCAP_NETNS_BTF_H */
