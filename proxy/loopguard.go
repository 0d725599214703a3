package proxy

import (
	"net"
	"net/netip"
	"slices"
	"sync"
)

// isLoop reports whether relaying to dst would reach the proxy itself: dst is one of the listener addresses,
// or dst's port is one of the proxy's ports and dst is a local address (loopback, unspecified, or isLocal).
// isLocal is consulted only in that last case, so it may be slow.
func isLoop(dst netip.AddrPort, listeners []netip.AddrPort, ports []uint16, isLocal func(netip.Addr) bool) bool {
	dst = unmapAddrPort(dst)
	if slices.Contains(listeners, dst) {
		return true
	}
	if !slices.Contains(ports, dst.Port()) {
		return false
	}
	a := dst.Addr()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	return isLocal != nil && isLocal(a)
}

// loopReason says why relaying the connection from peer to dst would loop back into the proxy ("" if it would
// not), and counts a loop error when it would. Both engines ask it before dialing.
func (p *Proxy) loopReason(peer, dst netip.AddrPort) string {
	why := ""
	switch {
	case p.upstreams.contains(peer, dst):
		why = "loop: peer is the proxy's own upstream socket"
	case isLoop(dst, p.listenAddrs, p.ports, isLocalAddr):
		why = "loop: destination is the proxy itself"
	default:
		return ""
	}
	p.stats.Errors.Loop.Add(1)
	return why
}

// isLocalAddr reports whether a is assigned to an interface of the current network namespace.
func isLocalAddr(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refusing is the safe answer for a loop guard
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// upstreamSet holds the local and remote addresses of the proxy's open upstream sockets: an accepted connection
// whose peer is one of those local addresses and whose original destination is that socket's remote address is
// the proxy's own upstream connection captured again (a loop, e.g. when the proxy runs as a uid that capture does
// not exempt). Both must match: upstream sockets get their port from connect(), which may give the same local
// port to connections towards different destinations, so a client socket can share a port with an upstream one.
type upstreamSet struct {
	mu sync.Mutex
	m  map[netip.AddrPort]netip.AddrPort
}

func (s *upstreamSet) add(local, remote netip.AddrPort) {
	if !local.IsValid() {
		return
	}
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[netip.AddrPort]netip.AddrPort)
	}
	s.m[local] = remote
	s.mu.Unlock()
}

func (s *upstreamSet) remove(local netip.AddrPort) {
	if !local.IsValid() {
		return
	}
	s.mu.Lock()
	delete(s.m, local)
	s.mu.Unlock()
}

// contains reports whether an open upstream socket goes from local to remote.
func (s *upstreamSet) contains(local, remote netip.AddrPort) bool {
	if !local.IsValid() {
		return false
	}
	s.mu.Lock()
	r, ok := s.m[local]
	s.mu.Unlock()
	return ok && r == remote
}
