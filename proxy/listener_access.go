package proxy

import "syscall"

// Listener returns the open listener of direction d (nil before Listen, or when that listener is off), so that the
// caller can hand it to the capture (for example to register the inbound listener in eBPF mode) before dropping
// privileges. The proxy still owns it: do not close it.
func (p *Proxy) Listener(d Direction) syscall.Conn {
	if ls := p.Listeners(d); len(ls) > 0 {
		return ls[0]
	}
	return nil
}

// Listeners returns every open listener of direction d, the primary one first, then its IPv6 twin (see Listener).
func (p *Proxy) Listeners(d Direction) []syscall.Conn {
	var out []syscall.Conn
	for _, l := range p.listeners {
		switch {
		case l.dir != d:
		case l.ln != nil:
			out = append(out, l.ln)
		default:
			out = append(out, rawConn{fd: l.fd})
		}
	}
	return out
}
