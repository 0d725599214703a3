package proxy

import "syscall"

// Listener returns the open listener of direction d (nil before Listen, or when that listener is off), so that the
// caller can hand it to the capture (for example to register the inbound listener in eBPF mode) before dropping
// privileges. The proxy still owns it: do not close it.
func (p *Proxy) Listener(d Direction) syscall.Conn {
	for _, l := range p.listeners {
		if l.dir != d {
			continue
		}
		if l.ln != nil {
			return l.ln
		}
		return rawConn{fd: l.fd}
	}
	return nil
}
