/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What the outbound (meshcap.h) and inbound (inbound.h) programs both need from the system headers, which BPF
 * objects cannot include whole: socket constants and userspace's struct sockaddr_in and sockaddr_in6. Defined once here.
 */
#ifndef MESHCAP_COMMON_H
#define MESHCAP_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif
/* netfilter's SO_ORIGINAL_DST (linux/netfilter_ipv4.h), what every transparent proxy asks. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef SOL_IPV6
#define SOL_IPV6 41
#endif
/* netfilter's IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h): the same number at level SOL_IPV6. */
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

#ifndef TCP_CLOSE
#define TCP_CLOSE 7
#endif

/* struct sockaddr_in, as userspace expects it (16 bytes). */
struct mc_sockaddr_in {
	__u16 sin_family;
	__u16 sin_port; /* network byte order */
	__u32 sin_addr; /* network byte order */
	__u8 sin_zero[8];
};

/* struct sockaddr_in6, as userspace expects it (28 bytes). */
struct mc_sockaddr_in6 {
	__u16 sin6_family;
	__u16 sin6_port; /* network byte order */
	__u32 sin6_flowinfo;
	__u32 sin6_addr[4];
	__u32 sin6_scope_id;
};

#endif /* MESHCAP_COMMON_H */
