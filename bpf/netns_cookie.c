// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/sock_create of the netns cookie reader (loader/netns_cookie.go), for kernels that give userspace no
 * SO_NETNS_COOKIE (before Linux 5.14). The reader attaches this program to a private cgroup it has just made and
 * starts one short child directly into that cgroup, forked from a thread inside the netns to read; the child's
 * socket runs the program, which writes bpf_get_netns_cookie (cgroup_sock programs have it from Linux 5.8) into
 * slot 0 of mc_netns_cookie_out. Every socket of that cgroup is the child's, and all of them are in that netns, so
 * the last write is the answer. On kernels that make the cookie lazily (5.10), this call is what makes it: the
 * capture programs later get the same value.
 */
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mc_netns_cookie_out SEC(".maps");

SEC("cgroup/sock_create")
int mc_netns_cookie_read(struct bpf_sock *sk)
{
	__u32 slot = 0;
	__u64 cookie = bpf_get_netns_cookie(sk);

	bpf_map_update_elem(&mc_netns_cookie_out, &slot, &cookie, BPF_ANY);
	return 1; /* never refuses a socket */
}

char _license[] SEC("license") = "Dual BSD/GPL";
