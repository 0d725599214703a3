package proxy

import (
	"errors"
	"net/netip"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// lconn is one connection of the event-loop engine: the accepted (down) socket and the upstream (up) socket.
// Only its loop touches it.
type lconn struct {
	dir       Direction
	ls        *ListenerStats
	down, up  side
	peer, dst netip.AddrPort
	upLocal   netip.AddrPort
	fast      bool
	connected bool // upstream connect completed; relaying
	closed    bool
	eofs      int // directions that reached EOF
	deadline  time.Time
	start     time.Time
}

// side is one socket of an lconn. pending holds bytes read from this socket that the other socket did not take
// yet; while it is set this socket is not read.
type side struct {
	fd       int
	gen      int32
	c        *lconn
	isUp     bool
	readable bool // edge-triggered: data (or EOF) may be waiting
	rdhup    bool // the peer's FIN was signalled: read until EOF even after a short read
	eof      bool
	pending  *[]byte
	n        int64 // bytes relayed from this socket to the other
}

func (s *side) other() *side {
	if s.isUp {
		return &s.c.down
	}
	return &s.c.up
}

// newConn takes over an accepted socket: original destination, loop guard, non-blocking upstream connect.
func (l *evloop) newConn(ln *listener, fd int, peer netip.AddrPort) {
	p := l.p
	ls := p.stats.listener(ln.dir)
	ls.Accepted.Add(1)
	ls.Active.Add(1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // as Go (and Envoy) do on every TCP socket
	dst, fast, err := p.originalDstFD(ln.dir, fd, peer, ln.addr)
	if err != nil {
		p.stats.Errors.OrigDst.Add(1)
		l.refuseFD(ln.dir, ls, fd, peer, dst, "original destination unknown", err)
		return
	}
	if why := p.loopReason(peer, dst); why != "" {
		l.refuseFD(ln.dir, ls, fd, peer, dst, why, nil)
		return
	}
	ufd, err := p.connectUpstream(ln.dir, dst)
	if err != nil {
		p.stats.Errors.Dial.Add(1)
		l.refuseFD(ln.dir, ls, fd, peer, dst, "dial failed", err)
		return
	}
	c := &lconn{dir: ln.dir, ls: ls, peer: peer, dst: dst, fast: fast, start: time.Now()}
	c.deadline = c.start.Add(p.cfg.DialTimeout)
	// connect() has chosen the source port already: record it now, before the SYN can come back to one of our
	// listeners (the proxy captured by its own rules), so that the loop guard recognises that connection.
	if sa, err := unix.Getsockname(ufd); err == nil {
		c.upLocal = fromSockaddr(sa)
		p.upstreams.add(c.upLocal, dst)
	}
	c.down = side{fd: fd, c: c}
	c.up = side{fd: ufd, c: c, isUp: true}
	l.conns[c] = struct{}{}
	if err := l.register(&c.down); err != nil {
		_ = unix.Close(ufd)
		c.up.fd = -1
		p.stats.Errors.Dial.Add(1)
		l.abort(c, "epoll_ctl", err)
		return
	}
	if err := l.register(&c.up); err != nil {
		p.stats.Errors.Dial.Add(1)
		l.abort(c, "epoll_ctl", err)
		return
	}
	l.dials = append(l.dials, c)
}

func (l *evloop) register(s *side) error {
	l.gen++
	s.gen = l.gen
	for s.fd >= len(l.sides) {
		l.sides = append(l.sides, make([]*side, max(64, len(l.sides)))...)
	}
	l.sides[s.fd] = s
	ev := unix.EpollEvent{Events: connEvents, Fd: int32(s.fd), Pad: s.gen}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		l.sides[s.fd] = nil
		return err
	}
	return nil
}

// connectUpstream starts a non-blocking connect to dst (inbound from InboundSource/InboundSource6, as dial does).
func (p *Proxy) connectUpstream(dir Direction, dst netip.AddrPort) (int, error) {
	family := unix.AF_INET
	if !dst.Addr().Is4() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if src, fallback := p.inboundSource(dst.Addr()); dir == Inbound && src.IsValid() && !fallback.Load() {
		// IP_BIND_ADDRESS_NO_PORT: the port is chosen by connect() per 4-tuple, not by bind() for any peer.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, toSockaddr(netip.AddrPortFrom(src, 0))); err != nil {
			// The socket stays unbound: connect() picks the source.
			if fallback.CompareAndSwap(false, true) {
				p.log.Warn("cannot use the inbound source address; inbound upstream connections now use the kernel's choice",
					zap.Stringer("inbound_source", src), zap.Error(err))
			}
		}
	}
	if err := unix.Connect(fd, toSockaddr(dst)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func (l *evloop) onSide(s *side, events uint32) {
	c := s.c
	if s.isUp && !c.connected {
		if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			serr, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && serr != 0 {
				err = unix.Errno(serr)
			}
			if err == nil {
				err = unix.ECONNREFUSED
			}
			l.dialFailed(c, err)
			return
		}
		if events&unix.EPOLLOUT == 0 {
			return
		}
		l.connected(c)
		if c.closed {
			return
		}
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.rdhup = true
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	if !c.connected {
		return // down socket before the upstream is connected: read later
	}
	if events&unix.EPOLLOUT != 0 {
		if src := s.other(); src.pending != nil {
			l.flush(src)
			if c.closed {
				return
			}
		}
	}
	if s.readable {
		l.pump(s)
	}
}

func (l *evloop) connected(c *lconn) {
	c.connected = true
	c.ls.Relayed.Add(1)
	if c.fast {
		c.ls.FastPath.Add(1)
	}
	if c.down.readable {
		l.pump(&c.down)
	}
}

// pump relays from src to its other side until src is drained, a write is partial, or src reaches EOF.
func (l *evloop) pump(src *side) {
	c := src.c
	dst := src.other()
	for src.readable && src.pending == nil && !src.eof && !c.closed {
		n, err := unix.Read(src.fd, l.buf)
		switch {
		case n > 0:
			if n < len(l.buf) && !src.rdhup {
				src.readable = false // drained (edge-triggered: new data brings a new event)
			}
			if !l.write(src, dst, l.buf[:n]) {
				return
			}
		case err == nil: // n == 0: EOF
			src.eof = true
			src.readable = false
			l.onEOF(src, dst)
			return
		case errors.Is(err, unix.EAGAIN):
			src.readable = false
			return
		case errors.Is(err, unix.EINTR):
		default:
			l.fail(c, err)
			return
		}
	}
}

// write sends b (read from src) to dst; what dst does not take becomes src's pending data. It reports whether
// src may be read on.
func (l *evloop) write(src, dst *side, b []byte) bool {
	w, err := sendNoSignal(dst.fd, b)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		l.fail(src.c, err)
		return false
	}
	l.count(src, w)
	if w == len(b) {
		return true
	}
	l.stalls++
	bp := pendingPool.Get().(*[]byte)
	*bp = append((*bp)[:0], b[w:]...)
	src.pending = bp
	return false
}

// flush writes src's pending data to the other side (now writable), then resumes reading src.
func (l *evloop) flush(src *side) {
	dst := src.other()
	b := *src.pending
	w, err := sendNoSignal(dst.fd, b)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		l.fail(src.c, err)
		return
	}
	l.count(src, w)
	if w < len(b) {
		*src.pending = b[:copy(b, b[w:])]
		return
	}
	pendingPool.Put(src.pending)
	src.pending = nil
	if src.readable {
		l.pump(src)
	}
}

func (l *evloop) count(src *side, n int) {
	if n <= 0 {
		return
	}
	src.n += int64(n)
	if src.isUp {
		src.c.ls.BytesDown.Add(uint64(n))
	} else {
		src.c.ls.BytesUp.Add(uint64(n))
	}
}

// onEOF forwards src's EOF as a FIN on dst (half-close). The second EOF closes both sockets: both were read to
// the end and everything was written, so close sends the same FIN that shutdown(2) would.
func (l *evloop) onEOF(src, dst *side) {
	c := src.c
	c.eofs++
	if c.eofs == 2 {
		l.closeConn(c, nil)
		return
	}
	if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil && !errors.Is(err, unix.ENOTCONN) {
		l.fail(c, err)
	}
}

func (l *evloop) fail(c *lconn, err error) {
	if !l.p.forced.Load() {
		l.p.stats.Errors.Relay.Add(1)
	}
	l.closeConn(c, err)
}

func (l *evloop) dialFailed(c *lconn, err error) {
	if c.closed {
		return
	}
	l.p.stats.Errors.Dial.Add(1)
	l.abort(c, "dial failed", err)
}

// abort ends a connection whose setup failed after the upstream socket was created: the client gets a reset.
func (l *evloop) abort(c *lconn, what string, err error) {
	_ = unix.SetsockoptLinger(c.down.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	l.closeSockets(c)
	l.p.logRefused(c.dir, c.peer, c.dst, what, err)
}

// closeConn closes a relayed connection and logs it.
func (l *evloop) closeConn(c *lconn, err error) {
	if c.closed {
		return
	}
	l.closeSockets(c)
	if ce := l.p.log.Check(l.p.connLevel(), "connection"); ce != nil {
		ce.Write(zap.Stringer("direction", c.dir), zap.Stringer("client", c.peer), zap.Stringer("original_dst", c.dst),
			zap.Int64("bytes_up", c.down.n), zap.Int64("bytes_down", c.up.n),
			zap.Duration("duration", time.Since(c.start)), zap.Error(err))
	}
}

func (l *evloop) closeSockets(c *lconn) {
	c.closed = true
	for _, s := range []*side{&c.down, &c.up} {
		if s.fd < 0 {
			continue
		}
		if s.fd < len(l.sides) && l.sides[s.fd] == s {
			l.sides[s.fd] = nil
		}
		_ = unix.Close(s.fd)
		s.fd = -1
		if s.pending != nil {
			pendingPool.Put(s.pending)
			s.pending = nil
		}
	}
	if c.upLocal.IsValid() {
		l.p.upstreams.remove(c.upLocal)
	}
	delete(l.conns, c)
	c.ls.Active.Add(-1)
}

// refuseFD closes an accepted socket that will not be relayed, with a reset.
func (l *evloop) refuseFD(dir Direction, ls *ListenerStats, fd int, peer, dst netip.AddrPort, why string, err error) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	_ = unix.Close(fd)
	ls.Active.Add(-1)
	l.p.logRefused(dir, peer, dst, why, err)
}
