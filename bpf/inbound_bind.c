// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/post_bind4 and cgroup/post_bind6 on the pod's cgroup: the first half of "find the sidecar's listener by
 * itself". When a TCP socket of this netns is bound to the inbound capture port (-z) by a process that capture
 * exempts (-u/-g, the proxy's uid or gid), its socket cookie goes into inb_exempt_bound. inbound_sockops.c then
 * registers it at listen(). Why here and not in sockops: sockops programs cannot ask who the current process is
 * (no bpf_get_current_uid_gid); cgroup sock programs run in the binding process's context and can.
 *
 * A socket bound by anyone else is not marked, so an app listening on 15006 first can never be handed captured
 * inbound traffic. Both hooks only observe: they always allow the bind.
 */
#include "inbound.h"

static __always_inline int inb_id_listed(const __u32 *ids, __u8 n, __u32 id)
{
#pragma unroll
	for (int i = 0; i < INB_MAX_IDS; i++) {
		if (i < n && ids[i] == id)
			return 1;
	}
	return 0;
}

static __always_inline void inb_mark_if_exempt(struct bpf_sock *sk)
{
	struct inb_config *cfg = inb_config();
	if (!cfg || sk->protocol != IPPROTO_TCP || sk->src_port != cfg->capture_port)
		return;
	/* Agent mode attaches one set per pod netns to a shared cgroup: only this netns's sockets are ours. 0: the
	 * kernel gives userspace no cookie (before 5.14); then only per-pod mode exists, whose cgroup is the pod's. */
	if (cfg->netns_cookie && bpf_get_netns_cookie(sk) != cfg->netns_cookie)
		return;
	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ugid, gid = (__u32)(ugid >> 32);
	if (!inb_id_listed(cfg->uids, cfg->n_uids, uid) && !inb_id_listed(cfg->gids, cfg->n_gids, gid)) {
		inb_count(INB_STAT_REFUSED_OWNER);
		return;
	}
	__u64 cookie = bpf_get_socket_cookie(sk);
	__u8 one = 1;
	bpf_map_update_elem(&inb_exempt_bound, &cookie, &one, BPF_ANY);
}

SEC("cgroup/post_bind4")
int inb_post_bind4(struct bpf_sock *sk)
{
	inb_mark_if_exempt(sk);
	return 1;
}

/* A dual-stack [::]:15006 listener (Go's default, HAProxy's "bind :::15006 v4v6") takes IPv4 lookups too. */
SEC("cgroup/post_bind6")
int inb_post_bind6(struct bpf_sock *sk)
{
	inb_mark_if_exempt(sk);
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
