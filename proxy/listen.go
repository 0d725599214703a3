package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Addr returns the bound address of a listener (useful with port 0); invalid if that listener is off.
func (p *Proxy) Addr(d Direction) netip.AddrPort {
	for _, l := range p.listeners {
		if l.dir == d {
			return l.addr
		}
	}
	return netip.AddrPort{}
}

// AdminAddr returns the bound admin address; invalid if the admin listener is off.
func (p *Proxy) AdminAddr() netip.AddrPort {
	if p.admin == nil {
		return netip.AddrPort{}
	}
	return tcpAddrPort(p.admin.Addr())
}

// Listen opens the listeners (and the admin listener). Call it before dropping privileges.
// On error nothing stays open.
func (p *Proxy) Listen() (err error) {
	if len(p.listeners) > 0 {
		return errors.New("already listening")
	}
	defer func() {
		if err != nil {
			p.closeListeners()
		}
	}()
	for _, l := range p.cfg.listenAddrs() {
		if l.addr == "" {
			continue
		}
		pl, err := p.listen(l.dir, l.addr)
		if err != nil && l.v6Extra && ipv6Unavailable(err) {
			p.log.Info("no IPv6 here: IPv6 listener not opened", zap.Stringer("direction", l.dir), zap.String("addr", l.addr), zap.Error(err))
			continue
		}
		if err != nil {
			return fmt.Errorf("listen %s on %s: %w", l.dir, l.addr, err)
		}
		a := pl.addr
		fields := []zap.Field{zap.Stringer("direction", l.dir), zap.Stringer("addr", a), zap.Stringer("engine", p.cfg.Engine)}
		if p.cfg.Engine == EngineGoroutine {
			fields = append(fields, zap.Stringer("copy", p.cfg.Copy))
		}
		p.log.Info("listening", fields...)
		p.listeners = append(p.listeners, pl)
		p.listenAddrs = append(p.listenAddrs, a)
		p.ports = append(p.ports, a.Port())
	}
	if p.cfg.AdminAddr != "" {
		ln, err := listenTCP(p.cfg.AdminAddr)
		if err != nil {
			return fmt.Errorf("listen admin on %s: %w", p.cfg.AdminAddr, err)
		}
		p.admin = ln
		a := tcpAddrPort(ln.Addr())
		p.log.Info("admin listening", zap.Stringer("addr", a))
		p.listenAddrs = append(p.listenAddrs, a)
		p.ports = append(p.ports, a.Port())
	}
	p.ports = append(p.ports, p.cfg.ExtraPorts...)
	return nil
}

// listen opens one relay listener: a raw non-blocking socket for EngineLoop, a net.TCPListener otherwise.
func (p *Proxy) listen(dir Direction, addr string) (*listener, error) {
	if p.cfg.Engine == EngineLoop {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		fd, a, err := listenRaw(ap)
		if err != nil {
			return nil, err
		}
		return &listener{dir: dir, fd: fd, addr: a}, nil
	}
	ln, err := listenTCP(addr)
	if err != nil {
		return nil, err
	}
	return &listener{dir: dir, ln: ln, fd: -1, addr: tcpAddrPort(ln.Addr())}, nil
}

// listenTCP listens with MPTCP off, on IPv4 only for an IPv4 literal and IPv6 only for an IPv6 literal.
func listenTCP(addr string) (*net.TCPListener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	network := "tcp4"
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		network = "tcp6"
	}
	lc := net.ListenConfig{KeepAlive: -1} // no keep-alive setsockopt calls on every accepted socket
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// Close closes the listeners of a Proxy whose Serve was never called (Serve closes them itself).
func (p *Proxy) Close() error {
	p.closeListeners()
	p.cancel()
	return nil
}

func (p *Proxy) closeListeners() {
	for _, l := range p.listeners {
		if l.ln != nil {
			_ = l.ln.Close()
		} else if l.fd >= 0 {
			_ = unix.Close(l.fd)
			l.fd = -1
		}
	}
	if p.admin != nil {
		_ = p.admin.Close()
	}
}
