package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// bindAddressNoPort defers the choice of the source port to connect(), so that binding the fixed inbound
// source address does not limit all inbound upstream connections to one ephemeral port range.
func bindAddressNoPort(network, _ string, c syscall.RawConn) error {
	if network != "tcp4" {
		return nil
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// handle owns one accepted connection; it becomes one of the two relay goroutines.
func (p *Proxy) handle(l *listener, down *net.TCPConn, ls *ListenerStats) {
	defer p.wg.Done()
	defer ls.Active.Add(-1)
	start := time.Now()
	peer := tcpAddrPort(down.RemoteAddr())
	dst, fast, err := p.originalDst(l.dir, down, l.addr)
	if err != nil {
		p.stats.Errors.OrigDst.Add(1)
		p.refuse(l.dir, down, peer, dst, "original destination unknown", err)
		return
	}
	if why := p.loopReason(peer, dst); why != "" {
		p.refuse(l.dir, down, peer, dst, why, nil)
		return
	}
	up, err := p.dial(l.dir, dst)
	if err != nil {
		p.stats.Errors.Dial.Add(1)
		p.refuse(l.dir, down, peer, dst, "dial failed", err)
		return
	}
	upLocal := tcpAddrPort(up.LocalAddr())
	p.upstreams.add(upLocal, dst)
	ls.Relayed.Add(1)

	r := relayPool.Get().(*relay)
	r.p, r.dir, r.stats, r.down, r.up, r.dst = p, l.dir, ls, down, up, dst
	r.buffer = fast || p.cfg.Copy == CopyBuffer // fast path: splice would never see the redirected data
	if fast {
		ls.FastPath.Add(1)
	}
	p.mu.Lock()
	forced := p.forced.Load()
	if !forced {
		p.active[r] = struct{}{}
	}
	p.mu.Unlock()
	if forced { // accepted before the stop, connected after the drain timeout
		_ = down.Close()
		_ = up.Close()
	}

	r.run()

	p.mu.Lock()
	delete(p.active, r)
	p.mu.Unlock()
	p.upstreams.remove(upLocal)
	if ce := p.log.Check(p.connLevel(), "connection"); ce != nil {
		err := r.upErr
		if err == nil {
			err = r.downErr
		}
		ce.Write(zap.Stringer("direction", l.dir), zap.Stringer("client", peer), zap.Stringer("original_dst", dst),
			zap.Int64("bytes_up", r.upN), zap.Int64("bytes_down", r.downN),
			zap.Duration("duration", time.Since(start)), zap.Error(err))
	}
	r.reset()
	relayPool.Put(r)
}

func (p *Proxy) connLevel() zapcore.Level {
	if p.cfg.LogConnections {
		return zapcore.InfoLevel
	}
	return zapcore.DebugLevel
}

// refuse closes a connection that will not be relayed, with a reset (as a refused connect would look).
func (p *Proxy) refuse(dir Direction, c *net.TCPConn, peer, dst netip.AddrPort, why string, err error) {
	_ = c.SetLinger(0)
	_ = c.Close()
	p.logRefused(dir, peer, dst, why, err)
}

func (p *Proxy) logRefused(dir Direction, peer, dst netip.AddrPort, why string, err error) {
	if ce := p.log.Check(p.connLevel(), "connection refused"); ce != nil {
		f := []zap.Field{zap.Stringer("direction", dir), zap.Stringer("client", peer), zap.String("reason", why)}
		if dst.IsValid() {
			f = append(f, zap.Stringer("original_dst", dst))
		}
		if err != nil {
			f = append(f, zap.Error(err))
		}
		ce.Write(f...)
	}
}

// dial connects to the original destination. Inbound connections come from InboundSource (istio's 127.0.0.6) or,
// to IPv6 destinations, InboundSource6 (::6); if binding it fails (address not available) the proxy falls back, once and for good, to the
// kernel's choice of source and logs a warning.
func (p *Proxy) dial(dir Direction, dst netip.AddrPort) (*net.TCPConn, error) {
	network := "tcp4"
	if !dst.Addr().Is4() {
		network = "tcp6"
	}
	if dir == Outbound {
		return dialNoBind(p.ctx, p.dialOut, network, dst)
	}
	src, fallback := p.inboundSource(dst.Addr())
	if !src.IsValid() || fallback.Load() {
		return dialNoBind(p.ctx, p.dialIn, network, dst)
	}
	up, err := p.dialIn.DialTCP(p.ctx, network, netip.AddrPortFrom(src, 0), dst)
	if err != nil && isBindError(err) {
		if fallback.CompareAndSwap(false, true) {
			p.log.Warn("cannot use the inbound source address; inbound upstream connections now use the kernel's choice",
				zap.Stringer("inbound_source", src), zap.Error(err))
		}
		return dialNoBind(p.ctx, p.dialIn, network, dst)
	}
	return up, err
}

// dialNoBind connects without binding a local address first. (*net.Dialer).DialTCP with a zero laddr still
// binds 0.0.0.0:0 before connect(): an explicit bind searches the ephemeral range for a port that is free for
// any peer and cannot reuse TIME_WAIT ports, which under a high new-connection rate (tens of thousands of
// TIME_WAIT sockets) cost about half of the proxy's CPU. connect() on an unbound socket picks the port per
// 4-tuple instead (and may reuse TIME_WAIT with tcp_tw_reuse).
func dialNoBind(ctx context.Context, d *net.Dialer, network string, dst netip.AddrPort) (*net.TCPConn, error) {
	c, err := d.DialContext(ctx, network, dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func isBindError(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && se.Syscall == "bind"
}

func (p *Proxy) debug() bool { return p.log.Core().Enabled(zapcore.DebugLevel) }

func zapDir(d Direction) zap.Field { return zap.Stringer("direction", d) }

func zapErr(err error) zap.Field { return zap.Error(err) }
