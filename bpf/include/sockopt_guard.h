/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What every cgroup/getsockopt program of meshcap (getsockopt.c, inbound_getsockopt.c) shares: how it answers
 * (mc_answer), and the rule it ends with: an answer larger than a page must reach the caller as the kernel gave it.
 *
 * The kernel hands a getsockopt program at most a page of the answer. Linux 5.10 then fails the whole call with
 * EFAULT when the program returns with ctx->optlen still above that page, even if it touched nothing (measured:
 * `iptables-legacy -L` of a 100-rule table in a captured cgroup, "Bad address"). Setting ctx->optlen to 0 tells
 * every kernel of the matrix (5.10 to 6.18) to keep the kernel's own answer (docs/kernels.md).
 */
#ifndef MESHCAP_SOCKOPT_GUARD_H
#define MESHCAP_SOCKOPT_GUARD_H

#include <linux/bpf.h>

#define MC_SOCKOPT_PAGE 4096

/* Set the answer's length and override the kernel's error. */
static __always_inline void mc_answer(struct bpf_sockopt *ctx, int optlen)
{
	ctx->optlen = optlen;
	/* Why the barrier: clang 14 merges the optlen and retval stores into one 8-byte store, which the verifier
	 * rejects (invalid bpf_context access off=32 size=8). */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
}

/* Ends a cgroup/getsockopt program: returns 1 (the call proceeds), with a larger-than-a-page answer passed on. */
static __always_inline int mc_sockopt_keep_large(struct bpf_sockopt *ctx)
{
	if (ctx->optlen > MC_SOCKOPT_PAGE) {
		__s32 keep = 0;
		/* Why through a register: 5.10 and 6.1 reject an immediate store (BPF_ST) into the context. */
		asm volatile("" : "+r"(keep));
		ctx->optlen = keep;
	}
	return 1;
}

#endif /* MESHCAP_SOCKOPT_GUARD_H */
