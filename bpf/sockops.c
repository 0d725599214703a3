// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops: turns the client socket's record (mc_client, from connect4 or connect6) into "4-tuple -> original
 * destination" that the proxy can find from its accepted socket, and frees tuple entries on every path.
 *
 *   client TCP_CONNECT (captured)   -> ask for state callbacks (a refused or reset connect then frees its entry)
 *   client ACTIVE_ESTABLISHED        -> mc_orig_tuple[(netns, proxy-local, client-addr)] = original destination
 *   proxy PASSIVE_ESTABLISHED        -> if it has an entry, mark it owned by this socket, ask for state callbacks
 *   STATE_CB to TCP_CLOSE            -> proxy side: delete its entry; client side: delete the entry when no proxy
 *                                       socket ever owned it (the proxy never accepted: nobody else would free it)
 *
 * The client's record itself is socket storage: the kernel frees it with the socket.
 *
 * Two entry points over the same code: mc_sockops, and for Linux 5.10 to 5.14 mc_sockops_btf, which first reads
 * the netns cookie through BTF for a proxy socket whose listener predates the attachment (see its comment).
 *
 * Fast path (opt-in, MC_ORIG_F_FAST_PATH from connect4): at ACTIVE_ESTABLISHED the client end, at
 * PASSIVE_ESTABLISHED the proxy end goes into mc_sockhash, each with a mc_fp_peer storage naming the other end
 * (see fastpath.c). The proxy end goes in only if the client end did; the tuple entry's flags record what went
 * in, and getsockopt tells the proxy. The kernel removes a socket from the sockhash when it closes.
 *
 * Why the tuple entry is freed by the proxy's socket and not the client's: a client may write and close before
 * the proxy has even accepted; its socket reaches TCP_CLOSE (via TIME_WAIT/FIN_WAIT2 minisocks) while the proxy
 * still has to ask SO_ORIGINAL_DST. Nothing is LRU: a live entry is never evicted. Every mc_orig_tuple insert and
 * delete moves the pod's tuples gauge (mc_stats).
 */
#include "meshcap.h"
#include "netns_btf.h"

/* The one netns-cookie read of this program type (sock_ops has bpf_get_netns_cookie from 5.15; before, the
 * cookie sock_create recorded, or mc_record_netns_btf for a socket sock_create never saw). Only the proxy's
 * (passive) side needs it: the client side uses the cookie connect4 recorded in mc_client. 0 (unknown) matches no
 * entry: the client side always keys by a real cookie. */
static __always_inline __u64 mc_sock_ops_netns(struct bpf_sock_ops *skops)
{
	if (mc_netns_from_storage)
		return mc_stored_netns(skops->sk);
	return bpf_get_netns_cookie(skops);
}

static __always_inline struct mc_client *mc_client_of(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return NULL;
	return bpf_sk_storage_get(&mc_client, sk, 0, 0);
}

static __always_inline void mc_proxy_view(struct mc_tuple *t, struct bpf_sock_ops *skops, __u64 netns, int active)
{
	/* Why volatile: clang merges adjacent 4-byte context loads (remote_ip4, local_ip4) into one 8-byte load,
	 * which the verifier rejects (invalid bpf_context access off=24 size=8). */
	__u32 laddr = *(volatile __u32 *)&skops->local_ip4;
	__u16 lport = (__u16) * (volatile __u32 *)&skops->local_port; /* host byte order */
	__u32 raddr = *(volatile __u32 *)&skops->remote_ip4;
	__u16 rport = (__u16)bpf_ntohl(*(volatile __u32 *)&skops->remote_port); /* network order, in a u32 */

	if (active) /* the client's local side is the proxy's remote side */
		mc_fill_tuple(t, netns, raddr, rport, laddr, lport);
	else
		mc_fill_tuple(t, netns, laddr, lport, raddr, rport);
}

/* Give the socket its peer's key, then put it into mc_sockhash under self. 1 if it is in. */
static __always_inline int mc_fp_insert(struct bpf_sock_ops *skops, struct mc_tuple *self, struct mc_tuple *peer)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 0;
	struct mc_fp_peer *st = bpf_sk_storage_get(&mc_fp_peer, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	st->peer = *peer;
	st->mode = MC_FP_UNDECIDED;
	/* Fails for sockets a sockhash cannot hold (MPTCP subflows) or when the map is full: plain TCP then. */
	if (bpf_sock_hash_update(skops, &mc_sockhash, self, BPF_ANY)) {
		st->mode = MC_FP_TCP;
		return 0;
	}
	return 1;
}

static __always_inline void mc_active_established(struct bpf_sock_ops *skops)
{
	struct mc_client *cl = mc_client_of(skops);
	if (!cl || !(cl->flags & MC_CL_F_COUNTED))
		return;

	struct mc_tuple t;
	mc_proxy_view(&t, skops, cl->netns, 1);
	struct mc_orig val = cl->orig; /* copy: map values must not be passed as keys/values of another map update */
	if (val.flags & MC_ORIG_F_FAST_PATH) {
		struct mc_tuple self; /* the client's own view: the key the proxy end looks it up by */
		mc_fill_tuple(&self, t.netns, t.remote_addr, t.remote_port, t.local_addr, t.local_port);
		if (mc_fp_insert(skops, &self, &t))
			val.flags |= MC_ORIG_F_APP_IN;
	}
	struct mc_stats *st = mc_stats_of(val.cfg);
	if (bpf_map_update_elem(&mc_orig_tuple, &t, &val, BPF_NOEXIST) == 0) {
		if (st)
			mc_gauge_add(st, &st->tuples, 1);
		return;
	}
	/* An entry with this tuple already: a stale one (the same 4-tuple cannot be live twice). Replace it, the
	 * count stays. Else the node-wide table is full: the proxy will find no destination and close (counted). */
	if (bpf_map_update_elem(&mc_orig_tuple, &t, &val, BPF_EXIST) != 0 && st)
		mc_count(&st->tuple_lost);
}

static __always_inline void mc_passive_established(struct bpf_sock_ops *skops)
{
	struct mc_tuple t;
	mc_proxy_view(&t, skops, mc_sock_ops_netns(skops), 0);
	struct mc_orig *orig = bpf_map_lookup_elem(&mc_orig_tuple, &t);
	if (!orig)
		return;
	orig->flags |= MC_ORIG_F_PROXY_OWNED;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	if ((orig->flags & (MC_ORIG_F_FAST_PATH | MC_ORIG_F_APP_IN)) != (MC_ORIG_F_FAST_PATH | MC_ORIG_F_APP_IN))
		return;
	struct mc_tuple peer; /* the client's own view */
	mc_fill_tuple(&peer, t.netns, t.remote_addr, t.remote_port, t.local_addr, t.local_port);
	if (mc_fp_insert(skops, &t, &peer))
		orig->flags |= MC_ORIG_F_PROXY_IN; /* read by getsockopt: only this socket's own entry, no race */
}

/* Delete the entry at t; when it existed, give its count back. owned_only: only an entry a proxy socket owns
 * (the proxy side), or only one no proxy socket owns (the client side, owned_only = 0). */
static __always_inline void mc_free_tuple(struct mc_tuple *t, int proxy_side)
{
	struct mc_orig *orig = bpf_map_lookup_elem(&mc_orig_tuple, t);
	if (!orig)
		return;
	int owned = (orig->flags & MC_ORIG_F_PROXY_OWNED) != 0;
	if (owned != proxy_side)
		return;
	__u64 cfg = orig->cfg;
	if (bpf_map_delete_elem(&mc_orig_tuple, t) != 0)
		return; /* freed by the other side meanwhile */
	struct mc_stats *st = bpf_map_lookup_elem(&mc_stats, &cfg);
	if (st)
		mc_gauge_add(st, &st->tuples, -1);
}

static __always_inline void mc_closed(struct bpf_sock_ops *skops)
{
	struct mc_tuple t;
	struct mc_client *cl = mc_client_of(skops);
	if (cl) { /* a captured client socket */
		mc_proxy_view(&t, skops, cl->netns, 1);
		mc_free_tuple(&t, 0);
		return;
	}
	mc_proxy_view(&t, skops, mc_sock_ops_netns(skops), 0);
	mc_free_tuple(&t, 1);
}

/*
 * Native IPv6 (a client connect6 captured with MC_CL_F_IPV6, and the proxy's accepted socket on [::1]:proxy_port):
 * the same life cycle in mc_orig_tuple6, without the fast path.
 */
static __always_inline void mc_proxy_view6(struct mc_tuple6 *t, struct bpf_sock_ops *skops, __u64 netns, int active)
{
	__u32 l[4], r[4];
	/* Why volatile: one 4-byte context load per word (see mc_proxy_view). */
	for (int i = 0; i < 4; i++) {
		l[i] = *(volatile __u32 *)&skops->local_ip6[i];
		r[i] = *(volatile __u32 *)&skops->remote_ip6[i];
	}
	__u16 lport = (__u16) * (volatile __u32 *)&skops->local_port;
	__u16 rport = (__u16)bpf_ntohl(*(volatile __u32 *)&skops->remote_port);

	__builtin_memset(t, 0, sizeof(*t)); /* padding is part of the hash key */
	t->netns = netns;
	for (int i = 0; i < 4; i++) {
		t->local_addr[i] = active ? r[i] : l[i]; /* the client's remote side is the proxy's local side */
		t->remote_addr[i] = active ? l[i] : r[i];
	}
	t->local_port = active ? rport : lport;
	t->remote_port = active ? lport : rport;
}

static __always_inline void mc_active_established6(struct bpf_sock_ops *skops, struct mc_client *cl)
{
	struct bpf_sock *sk = skops->sk;
	struct mc_dst6 *d6 = sk ? bpf_sk_storage_get(&mc_dst6, sk, 0, 0) : NULL;
	if (!d6)
		return;
	struct mc_tuple6 t;
	mc_proxy_view6(&t, skops, cl->netns, 1);
	struct mc_orig6 val = {.port = cl->orig.port, .cfg = cl->orig.cfg};
	for (int i = 0; i < 4; i++)
		val.addr[i] = d6->addr[i];
	struct mc_stats *st = mc_stats_of(val.cfg);
	if (bpf_map_update_elem(&mc_orig_tuple6, &t, &val, BPF_NOEXIST) == 0) {
		if (st)
			mc_gauge_add(st, &st->tuples, 1);
		return;
	}
	/* a stale entry with this tuple (replaced, the count stays), or the node-wide table is full (counted) */
	if (bpf_map_update_elem(&mc_orig_tuple6, &t, &val, BPF_EXIST) != 0 && st)
		mc_count(&st->tuple_lost);
}

/* As mc_free_tuple, in mc_orig_tuple6. */
static __always_inline void mc_free_tuple6(struct mc_tuple6 *t, int proxy_side)
{
	struct mc_orig6 *orig = bpf_map_lookup_elem(&mc_orig_tuple6, t);
	if (!orig || ((orig->flags & MC_ORIG_F_PROXY_OWNED) != 0) != proxy_side)
		return;
	__u64 cfg = orig->cfg;
	if (bpf_map_delete_elem(&mc_orig_tuple6, t) != 0)
		return;
	struct mc_stats *st = bpf_map_lookup_elem(&mc_stats, &cfg);
	if (st)
		mc_gauge_add(st, &st->tuples, -1);
}

static __always_inline int mc_sockops6(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET6)
		return 1;
	struct mc_client *cl = mc_client_of(skops);
	if (cl && !((cl->flags & MC_CL_F_COUNTED) && (cl->flags & MC_CL_F_IPV6)))
		cl = NULL;
	struct mc_tuple6 t;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (cl)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		if (cl)
			mc_active_established6(skops, cl);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		mc_proxy_view6(&t, skops, mc_sock_ops_netns(skops), 0);
		struct mc_orig6 *orig = bpf_map_lookup_elem(&mc_orig_tuple6, &t);
		if (orig) {
			orig->flags |= MC_ORIG_F_PROXY_OWNED;
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		}
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != TCP_CLOSE)
			break;
		if (cl) {
			mc_proxy_view6(&t, skops, cl->netns, 1);
			mc_free_tuple6(&t, 0);
		} else {
			mc_proxy_view6(&t, skops, mc_sock_ops_netns(skops), 0);
			mc_free_tuple6(&t, 1);
		}
		break;
	}
	return 1;
}

/* An AF_INET6 socket with an IPv4-mapped peer (a client connect6 captured, ::ffff:127.0.0.1:<proxy port>): IPv4 on
 * the wire, with its IPv4 addresses in local_ip4/remote_ip4, so it is handled exactly as an AF_INET socket. */
static __always_inline int mc_sock_ops_v4mapped(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET6)
		return 0;
	/* Why volatile: one 4-byte context load per word (see mc_proxy_view). */
	return mc_is_v4mapped(*(volatile __u32 *)&skops->remote_ip6[0], *(volatile __u32 *)&skops->remote_ip6[1],
	                      *(volatile __u32 *)&skops->remote_ip6[2]);
}

static __always_inline int mc_sockops_run(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET && !mc_sock_ops_v4mapped(skops))
		return mc_sockops6(skops);

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (mc_client_of(skops))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
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

/* Linux 5.10 to 5.14 (mc_netns_from_storage): a proxy socket accepted from a listener created before the capture
 * was attached has no cookie from sock_create (nor a listener's to inherit). Read its netns's cookie through BTF
 * and record it in mc_sk_netns, where mc_sock_ops_netns finds it now and getsockopt (no bpf_skc_to_tcp_sock
 * there) finds it for SO_ORIGINAL_DST. Only the proxy's side needs it: PASSIVE_ESTABLISHED, which runs before
 * accept() returns the socket. On 5.10 the cookie exists by then: the client's connect4 asked for it. A 0 read
 * (none generated yet) records nothing: the socket stays unmatched (fail closed). */
static __always_inline void mc_record_netns_btf(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk || mc_stored_netns(sk))
		return;
	__u64 netns = mc_btf_netns(sk);
	if (!netns)
		return;
	__u64 *cookie = bpf_sk_storage_get(&mc_sk_netns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (cookie)
		*cookie = netns;
}

SEC("sockops")
int mc_sockops(struct bpf_sock_ops *skops)
{
	return mc_sockops_run(skops);
}

/* mc_sockops plus the BTF read above. A program of its own because its CO-RE relocations need the kernel's BTF
 * at load time: the loader loads it, under mc_sockops's hook, only for the storage variant (loader/variant.go). */
SEC("sockops")
int mc_sockops_btf(struct bpf_sock_ops *skops)
{
	if (mc_netns_from_storage && skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		mc_record_netns_btf(skops);
	return mc_sockops_run(skops);
}

char _license[] SEC("license") = "Dual BSD/GPL";
