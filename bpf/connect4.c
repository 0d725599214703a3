// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4: outbound capture. A TCP connect() from a process in the attached cgroup is rewritten to
 * 127.0.0.1:<proxy_port> unless exempt, and the original destination is recorded under the socket cookie.
 *
 * The decision mirrors istio's nat ISTIO_OUTPUT chain, in the same order and with the same meaning
 * (istio-golden/DEFAULTS.md section 5):
 *   9.  -o port                          -> RETURN (not captured, for everyone)
 *   11/12. owner uid in -u / gid in -g    -> RETURN (the proxy's own traffic goes direct)
 *   11b/15. loopback destination          -> RETURN
 *   16. -x CIDR                           -> RETURN
 *   17. -q port                           -> REDIRECT
 *   18. -i CIDR, or -i '*'                -> REDIRECT
 *   otherwise                             -> not captured
 * UDP (and anything that is not TCP) is never touched.
 */
#include "meshcap.h"

static __always_inline int mc_port_in(__u64 cfg_key, __u16 port, __u8 kind)
{
	struct mc_port_key k;

	__builtin_memset(&k, 0, sizeof(k)); /* padding is part of the hash key */
	k.cfg = cfg_key;
	k.port = port;
	k.kind = kind;
	return bpf_map_lookup_elem(&mc_ports, &k) != NULL;
}

static __always_inline int mc_cidr_in(void *trie, __u64 cfg_key, __u32 addr)
{
	struct mc_lpm_key k = {
		.prefixlen = 64 + 32, /* full config key + full address: the trie finds the longest stored prefix */
		.cfg_hi = (__u32)(cfg_key >> 32),
		.cfg_lo = (__u32)cfg_key,
		.addr = addr,
	};
	return bpf_map_lookup_elem(trie, &k) != NULL;
}

/* -u / -g: the caller's real uid/gid, as istio's "-m owner --uid-owner/--gid-owner" sees the socket owner. */
static __always_inline int mc_owner_exempt(const struct mc_config *cfg)
{
	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ugid;
	__u32 gid = (__u32)(ugid >> 32);

	for (int i = 0; i < MC_MAX_IDS; i++) {
		if (i < cfg->n_uids && cfg->uids[i] == uid)
			return 1;
		if (i < cfg->n_gids && cfg->gids[i] == gid)
			return 1;
	}
	return 0;
}

/* 127/8 and the configured loopback CIDR. When an -i CIDR is loopback, istio omits the rules that return all
 * traffic leaving through lo, so only the configured loopback CIDR (rule 15) stays exempt. */
static __always_inline int mc_loopback_exempt(const struct mc_config *cfg, __u32 daddr)
{
	if ((daddr & cfg->loopback_mask) == cfg->loopback_addr)
		return 1;
	if (!(cfg->flags & MC_F_LOOPBACK_INCLUDED) && (daddr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000))
		return 1;
	return 0;
}

static __always_inline int mc_should_capture(const struct mc_config *cfg, __u64 cfg_key, __u32 daddr, __u16 dport)
{
	if (mc_port_in(cfg_key, dport, MC_PORT_OUT_EXCLUDE))
		return 0;
	if (mc_owner_exempt(cfg))
		return 0;
	if (mc_loopback_exempt(cfg, daddr))
		return 0;
	if (mc_cidr_in(&mc_cidr_excl, cfg_key, daddr))
		return 0;
	if (mc_port_in(cfg_key, dport, MC_PORT_OUT_INCLUDE))
		return 1;
	if (cfg->flags & MC_F_OUTBOUND_ALL)
		return 1;
	return mc_cidr_in(&mc_cidr_incl, cfg_key, daddr);
}

SEC("cgroup/connect4")
int mc_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return SYS_PROCEED;

	__u64 cfg_key;
	struct mc_config *cfg = mc_lookup_config(bpf_get_netns_cookie(ctx), &cfg_key);
	if (!cfg || !cfg->proxy_port)
		return SYS_PROCEED;

	__u32 daddr = ctx->user_ip4;
	__u16 dport = bpf_ntohs((__u16)ctx->user_port);
	if (!mc_should_capture(cfg, cfg_key, daddr, dport))
		return SYS_PROCEED;

	/* Record before rewriting: if the map is full-and-LRU this evicts an old entry, never fails hard. A failed
	 * update leaves the connection uncaptured rather than captured without an answer for the proxy. */
	struct mc_orig orig = { .addr = daddr, .port = dport };
	if (cfg->flags & MC_F_FAST_PATH)
		orig.flags = MC_ORIG_F_FAST_PATH;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&mc_orig_cookie, &cookie, &orig, BPF_ANY))
		return SYS_PROCEED;

	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(cfg->proxy_port);
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
