// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/sock_release: gives a captured client socket's capacity slot back to its pod when the socket is released
 * (close(), or its process exiting), on every path: a completed connection, a reset, a refused or unreachable
 * connect, a connect that never reached TCP. The socket's record (mc_client) goes with the socket.
 */
#include "meshcap.h"

SEC("cgroup/sock_release")
int mc_sock_release(struct bpf_sock *sk)
{
	struct mc_client *cl = bpf_sk_storage_get(&mc_client, sk, 0, 0);
	if (!cl || !(cl->flags & MC_CL_F_COUNTED))
		return 1;
	cl->flags &= ~MC_CL_F_COUNTED;
	struct mc_stats *st = bpf_map_lookup_elem(&mc_stats, &cl->orig.cfg);
	if (st)
		mc_gauge_add(st, &st->conns, -1);
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
