// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_msg on mc_sockhash: the fast path of the app<->proxy loopback hop (opt-in, MC_F_FAST_PATH).
 *
 * sockops puts both ends of a captured connection into mc_sockhash (each under its own view of the 4-tuple) and
 * gives each a mc_fp_peer socket-storage value holding the key of the other end. On every sendmsg of such a socket
 * this program moves the message straight into the peer's receive (ingress) queue: no skb, no loopback device, no
 * TCP state machine on either side. The receiver must read with read()/recvmsg(): splice(2) only sees the TCP
 * receive queue, never the redirected data (hence opt-in, and the proxy asks getsockopt whether it is on it).
 *
 * Ordering: a socket decides once, at its first message: redirect if the peer is in the map, else TCP for good.
 * The receiver drains its redirect queue before its TCP queue, so bytes of one direction must never switch from
 * TCP to redirect (a redirected message would overtake unread TCP bytes). The only way a first message misses the
 * peer is the handshake race (the app writes before the proxy end has processed the final ACK): that connection
 * then simply stays on TCP in that direction. Switching from redirect to TCP happens only once the peer has
 * closed (it left the map), where the bytes could not be delivered anyway (TCP answers with a reset).
 */
#include "meshcap.h"

static __always_inline void mc_fp_count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&mc_fp_stats, &idx);
	if (c)
		*c += n; /* per-CPU: no atomics needed */
}

SEC("sk_msg")
int mc_fastpath(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	struct mc_fp_peer *st = bpf_sk_storage_get(&mc_fp_peer, sk, 0, 0);
	if (!st || st->mode == MC_FP_TCP) {
		mc_fp_count(MC_FP_PASS_MSGS, 1);
		return SK_PASS;
	}
	struct mc_tuple peer = st->peer; /* a stack copy: the helper wants a key it can hash */
	if (bpf_msg_redirect_hash(msg, &mc_sockhash, &peer, BPF_F_INGRESS) == SK_PASS) {
		if (st->mode == MC_FP_UNDECIDED)
			st->mode = MC_FP_REDIRECT;
		mc_fp_count(MC_FP_REDIRECT_MSGS, 1);
		mc_fp_count(MC_FP_REDIRECT_BYTES, msg->size);
		return SK_PASS;
	}
	/* Peer not in the map: through TCP (and, if this was the first message, for the rest of the socket's life). */
	if (st->mode == MC_FP_UNDECIDED)
		st->mode = MC_FP_TCP;
	mc_fp_count(MC_FP_PASS_MSGS, 1);
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
