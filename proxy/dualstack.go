package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Dual stack, as Envoy runs in a dual-stack istio pod: the outbound listener also on [::1]:15001 and the inbound
// one on [::]:15006 (IPv6-only sockets beside the IPv4 ones), the original destination of an IPv6 connection from
// SOL_IPV6/IP6T_SO_ORIGINAL_DST (origdst.go picks the level from the accepting listener's family), and inbound
// upstream connections to IPv6 destinations from ::6, the source istio's ip6tables rules return on lo.
// An IPv4-mapped destination (an AF_INET6 app socket connecting to ::ffff:a.b.c.d) travels as IPv4: it reaches
// the IPv4 listeners and is relayed to the plain IPv4 address.

// listenAddr is one listener to open; v6Extra marks the optional IPv6 ones (skipped where there is no IPv6).
type listenAddr struct {
	dir     Direction
	addr    string
	v6Extra bool
}

// listenAddrs are the listeners in opening order: IPv4 (or as configured) first, then the IPv6 twins, so that
// Listener(d) and Addr(d) keep returning the primary listener of each direction.
func (c *Config) listenAddrs() []listenAddr {
	return []listenAddr{{Outbound, c.OutboundAddr, false}, {Inbound, c.InboundAddr, false},
		{Outbound, c.OutboundAddr6, true}, {Inbound, c.InboundAddr6, true}}
}

func (c *Config) validateDualStack() error {
	for _, a := range []struct{ name, v string }{{"outbound IPv6", c.OutboundAddr6}, {"inbound IPv6", c.InboundAddr6}} {
		if a.v == "" {
			continue
		}
		if ap, _ := netip.ParseAddrPort(a.v); !ap.Addr().Is6() || ap.Addr().Is4In6() {
			return fmt.Errorf("invalid %s address %q: want an IPv6 address", a.name, a.v)
		}
	}
	if c.InboundSource6.IsValid() && (!c.InboundSource6.Is6() || c.InboundSource6.Is4In6()) {
		return fmt.Errorf("invalid inbound IPv6 source %q: want an IPv6 address", c.InboundSource6)
	}
	return nil
}

// ipv6Unavailable reports a listen error that means this host or netns has no IPv6 (no AF_INET6, or no ::1 on lo),
// where nothing can be redirected to an IPv6 listener anyway.
func ipv6Unavailable(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// inboundSource returns the source address for an inbound upstream connection to dst (InboundSource or
// InboundSource6 by family) and that family's fallback flag: set once binding it failed, after which connections
// of that family use the kernel's choice.
func (p *Proxy) inboundSource(dst netip.Addr) (netip.Addr, *atomic.Bool) {
	if dst.Is4() {
		return p.cfg.InboundSource, &p.srcFallback
	}
	return p.cfg.InboundSource6, &p.srcFallback6
}
