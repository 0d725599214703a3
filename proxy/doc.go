// Package proxy is meshcap's relay proxy: it accepts the connections that capture (iptables REDIRECT or the eBPF
// programs) steers to its listeners, finds each connection's original destination and relays bytes both ways.
//
// Invariants:
//   - The package never imports cilium/ebpf and never touches BPF: a BPF-map lookup, when wanted, is plugged in by
//     the caller as a Resolver. Otherwise the proxy behaves identically under iptables NAT (kernel SO_ORIGINAL_DST)
//     and eBPF capture (cgroup/getsockopt program answering SO_ORIGINAL_DST, sk_lookup keeping the local address).
//   - Original destination order: Resolver (if any); for the inbound listener, the accepted socket's local address
//     when its port is not the listener's own (sk_lookup/TPROXY steering, no NAT); getsockopt SO_ORIGINAL_DST
//     (SOL_IP/80, or SOL_IPV6/80 on IPv6 sockets). No answer -> the connection is closed and counted (origdst).
//   - The proxy never relays to itself: a destination on one of its own ports at a local address, or a connection
//     whose peer is one of the proxy's own upstream sockets, is closed and counted (loop).
//   - Listeners are opened before privileges are dropped; every upstream socket is created afterwards, as the exempt
//     uid/gid, so that capture does not catch the proxy's own traffic. MPTCP is off on every socket.
//   - Two engines behave identically (the same tests run against both). EngineLoop, the default (loop.go): a few
//     epoll event loops own raw non-blocking sockets; no goroutine, netpoller registration or timer per
//     connection; read/write through one buffer per loop. EngineGoroutine (`--engine goroutine`): Go's net
//     package, at most two goroutines per relayed connection (the per-connection goroutine copies one direction
//     itself), reused across connections (workers.go); copy buffers are pooled; splice mode uses the kernel's
//     zero-copy path, buffer mode plain read/write (needed when sockets sit in a sockmap with sk_msg redirection).
//   - eBPF fast path (`meshcap ebpf attach --fast-path`): the SO_ORIGINAL_DST call passes a 20-byte buffer
//     (sockaddr_in + flags, struct mc_origdst_ext in bpf/getsockopt.c); the cgroup/getsockopt program sets
//     flag 1 when the accepted socket is in the fast path's sockhash, and that connection is then relayed with
//     read/write whatever the copy mode (splice would never see the redirected data). Netfilter and the program
//     answer 16 bytes otherwise, so iptables mode and plain eBPF mode keep splice (goroutine engine; the loop
//     engine never splices). No extra syscall, no bpf().
//     A Resolver answer skips that call: do not combine a Resolver with --fast-path.
//   - Per-connection syscalls are kept to what relaying needs: no TCP keep-alive setsockopts (Envoy's default
//     too), upstream sockets are never bind()ed unless a source address is configured (an explicit bind searches
//     the whole ephemeral range and cannot reuse TIME_WAIT ports), and the last direction to reach EOF skips
//     shutdown(2) because the close that follows sends the same FIN. The upstream socket's local address is
//     recorded for the loop guard as soon as connect() has picked it, before the SYN can loop back.
//   - Half-close is honoured: EOF in one direction becomes CloseWrite on the other socket; both sockets are closed
//     only when both directions are done or one fails.
//   - Dual stack (dualstack.go), as Envoy in a dual-stack pod: optional IPv6-only twins of both listeners
//     ([::1]:15001, [::]:15006), skipped where the netns has no IPv6; inbound upstream connections come from
//     InboundSource (127.0.0.6) or, to IPv6 destinations, InboundSource6 (::6), each with its own fallback.
//   - DNS (dns.go) is a separate forwarder on the agent DNS port (15053, UDP and TCP): messages pass unchanged,
//     its sockets are created after the privilege drop (istio's DNS conntrack-zone rules match their owner).
//   - Counters are atomics, readable any time (Stats().Snapshot()); the logger is passed in, never global.
package proxy
