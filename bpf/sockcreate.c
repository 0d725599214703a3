// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/sock_create: records each new socket's netns cookie in mc_sk_netns, for the kernels whose sock_ops and
 * cgroup_sockopt programs cannot ask for it (before Linux 5.15, mc_netns_from_storage set by the loader). The map
 * is BPF_F_CLONE: a listener's cookie passes to every socket it accepts, which is how the proxy's accepted
 * sockets get theirs. With the helper available the program does nothing.
 */
#include "meshcap.h"

SEC("cgroup/sock_create")
int mc_sock_create(struct bpf_sock *sk)
{
	if (!mc_netns_from_storage)
		return 1;
	__u64 *cookie = bpf_sk_storage_get(&mc_sk_netns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (cookie)
		*cookie = bpf_get_netns_cookie(sk);
	return 1; /* never refuses a socket */
}

char _license[] SEC("license") = "Dual BSD/GPL";
