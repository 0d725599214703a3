package proxy

import "net"

// Listener returns the open listener of direction d (nil before Listen, or when that listener is off), so that the
// caller can hand it to the capture (for example to register the inbound listener in eBPF mode) before dropping
// privileges. The proxy still owns it: do not close it.
func (p *Proxy) Listener(d Direction) *net.TCPListener {
	for _, l := range p.listeners {
		if l.dir == d {
			return l.ln
		}
	}
	return nil
}
