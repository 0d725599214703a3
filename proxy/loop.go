package proxy

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The event-loop engine (EngineLoop, the default).
//
// Invariants:
//   - A fixed set of loops (Config.Loops, default DefaultLoops), each one goroutine blocked in epoll_wait on its own
//     epoll instance. Every listener is in every loop's epoll with EPOLLEXCLUSIVE, so a new connection wakes one
//     loop, which then owns both of its sockets until they are closed: no locks on the data path, no goroutine
//     and no netpoller registration per connection.
//   - Connection sockets are registered once (EPOLLIN|EPOLLOUT|EPOLLRDHUP, edge-triggered) and never modified;
//     closing them removes them. Each epoll event carries the fd and a generation number, so an event for a
//     closed fd whose number was reused in the same batch is ignored.
//   - Edge-triggered reads: a read shorter than the buffer means the socket was drained, unless the peer's FIN is
//     known (EPOLLRDHUP), in which case the loop reads on until EOF. A partial write keeps the rest in a pending
//     buffer and stops reading that direction until EPOLLOUT on the destination has flushed it.
//   - Relaying is read/write through one 256 KiB buffer per loop, never splice (which also suits the eBPF fast
//     path, whose data sits in the sk_msg queue where splice does not look). A direction whose destination is
//     full holds at most one read (256 KiB) in user space; the rest waits in the kernel's socket buffers.
//   - Upstream connects are non-blocking; their deadlines (DialTimeout) form a FIFO per loop (one timeout for all),
//     and epoll_wait sleeps at most until the oldest one.
//   - Stop: loops drop their listeners, then run until their last connection ends; on drain timeout they close
//     every connection (forced) and return.

const (
	loopBufSize  = 256 << 10 // one read buffer per loop
	loopMaxBatch = 128       // epoll events per epoll_wait
	acceptBatch  = 1         // accepts per listener event
	connEvents   = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
)

var pendingPool = sync.Pool{New: func() any { b := make([]byte, 0, loopBufSize); return &b }}

type evloop struct {
	p      *Proxy
	epfd   int
	wakefd int            // eventfd: Serve wakes the loop to stop accepting or to force-close
	lns    []loopListener // the proxy's listeners, as this loop registered them
	buf    []byte
	events []unix.EpollEvent
	sides  []*side // indexed by fd
	gen    int32   // generation stamped on every registered side
	conns  map[*lconn]struct{}
	dials  []*lconn // connecting upstreams, oldest deadline first

	stalls      uint64 // writes that came back short (the rest became pending data); tests read it
	accepting   bool
	acceptPause time.Time // after an accept error (EMFILE...): listeners off until then
	backoff     time.Duration
	stopped     sync.WaitGroup // Done once the loop dropped its listeners
	done        chan struct{}
}

type loopListener struct {
	fd int
	ln *listener
}

type loopEngine struct {
	loops  []*evloop
	forced atomic.Int64 // connections closed by the drain timeout
}

// DefaultLoops is the number of event loops when Config.Loops is 0: half the CPUs the process may use, at least
// one. A sidecar shares its pod's CPUs with the application it serves (Istio runs Envoy with 2 workers); on 2 CPUs
// one loop gave the same connection and request rates as two with a much lower p99 (docs/dev/perf-notes.md),
// because the loops' threads no longer compete with the application for both CPUs.
func DefaultLoops() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// prepareLoops creates the event loops (epoll instances with the listeners registered); nothing runs yet.
func (p *Proxy) prepareLoops() error {
	n := p.cfg.Loops
	if n <= 0 {
		n = DefaultLoops()
	}
	e := &loopEngine{}
	for range n {
		l, err := p.newLoop()
		if err != nil {
			for _, l := range e.loops {
				l.close()
			}
			return err
		}
		e.loops = append(e.loops, l)
	}
	p.engine = e
	return nil
}

// runLoops starts the loops made by prepareLoops.
func (p *Proxy) runLoops() {
	for _, l := range p.engine.loops {
		l.stopped.Add(1)
		go l.run()
	}
}

// discardLoops closes loops that never ran.
func (p *Proxy) discardLoops() {
	for _, l := range p.engine.loops {
		l.close()
	}
	p.engine = nil
}

func (p *Proxy) newLoop() (*evloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &evloop{p: p, epfd: epfd, wakefd: wfd, buf: make([]byte, loopBufSize),
		events: make([]unix.EpollEvent, loopMaxBatch), conns: make(map[*lconn]struct{}), done: make(chan struct{})}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wfd)}); err != nil {
		l.close()
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	for _, ln := range p.listeners {
		l.lns = append(l.lns, loopListener{fd: ln.fd, ln: ln})
	}
	if err := l.addListeners(); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

func (l *evloop) addListeners() error {
	for _, ln := range l.lns {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ln.fd)}
		err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ln.fd, &ev)
		if errors.Is(err, unix.EINVAL) {
			// Kernels before 4.5 have no EPOLLEXCLUSIVE (the iptables fallback may run there): every loop is
			// then woken for a new connection and all but one find nothing to accept.
			ev.Events = unix.EPOLLIN
			err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ln.fd, &ev)
		}
		if err != nil {
			return fmt.Errorf("epoll_ctl listener: %w", err)
		}
	}
	l.accepting = true
	return nil
}

func (l *evloop) dropListeners() {
	for _, ln := range l.lns {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
	}
	l.accepting = false
}

func (l *evloop) close() {
	_ = unix.Close(l.wakefd)
	_ = unix.Close(l.epfd)
}

// wake interrupts the loop's epoll_wait; it then reads the proxy's stopping/forced flags.
func (l *evloop) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(l.wakefd, one[:])
}

func (l *evloop) run() {
	defer close(l.done)
	defer l.close()
	stopSignalled := false
	for {
		if l.p.stopping.Load() && !stopSignalled {
			l.dropListeners()
			stopSignalled = true
			l.stopped.Done()
		}
		if l.p.forced.Load() {
			l.closeAll()
		}
		if stopSignalled && len(l.conns) == 0 {
			return
		}
		n, err := unix.EpollWait(l.epfd, l.events, l.timeout())
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.p.log.Error("epoll_wait failed: closing this loop's connections", zap.Error(err))
			l.closeAll()
			if !stopSignalled {
				l.stopped.Done()
			}
			return
		}
		for i := range n {
			l.dispatch(l.events[i])
		}
		l.expire()
	}
}

func (l *evloop) dispatch(ev unix.EpollEvent) {
	fd := int(ev.Fd)
	if fd == l.wakefd {
		var b [8]byte
		_, _ = unix.Read(l.wakefd, b[:])
		return
	}
	if fd < len(l.sides) {
		if s := l.sides[fd]; s != nil && s.gen == ev.Pad {
			l.onSide(s, ev.Events)
			return
		}
	}
	for _, ln := range l.lns {
		if ln.fd == fd {
			l.accept(ln)
			return
		}
	}
}

// timeout is epoll_wait's timeout in milliseconds: until the oldest pending connect's deadline or the end of an
// accept pause, else forever.
func (l *evloop) timeout() int {
	var next time.Time
	l.trimDials()
	if len(l.dials) > 0 {
		next = l.dials[0].deadline
	}
	if !l.acceptPause.IsZero() && (next.IsZero() || l.acceptPause.Before(next)) {
		next = l.acceptPause
	}
	if next.IsZero() {
		return -1
	}
	ms := time.Until(next).Milliseconds() + 1
	return int(max(ms, 0))
}

// trimDials drops connected or closed connections from the head of the dial FIFO.
func (l *evloop) trimDials() {
	i := 0
	for i < len(l.dials) && (l.dials[i].connected || l.dials[i].closed) {
		l.dials[i] = nil
		i++
	}
	if i > 0 {
		l.dials = l.dials[i:]
	}
}

// expire fails the connects past their deadline and ends an accept pause.
func (l *evloop) expire() {
	if len(l.dials) == 0 && l.acceptPause.IsZero() {
		return
	}
	now := time.Now()
	for l.trimDials(); len(l.dials) > 0 && !now.Before(l.dials[0].deadline); l.trimDials() {
		c := l.dials[0]
		l.dials[0] = nil
		l.dials = l.dials[1:]
		l.dialFailed(c, unix.ETIMEDOUT)
	}
	if !l.acceptPause.IsZero() && !now.Before(l.acceptPause) {
		l.acceptPause = time.Time{}
		if !l.p.stopping.Load() {
			if err := l.addListeners(); err != nil {
				l.p.log.Warn("re-adding listeners after an accept pause", zap.Error(err))
			}
		}
	}
}

// accept takes up to acceptBatch connections from ln (level-triggered: the rest wake a loop again).
func (l *evloop) accept(ln loopListener) {
	if !l.accepting {
		return
	}
	for range acceptBatch {
		fd, sa, err := unix.Accept4(ln.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
			l.backoff = 0
			l.newConn(ln.ln, fd, fromSockaddr(sa))
			continue
		case errors.Is(err, unix.EAGAIN):
			return
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		}
		// EMFILE and the like: count, stop listening for a while, retry.
		l.p.stats.Errors.Accept.Add(1)
		l.backoff = min(max(2*l.backoff, 5*time.Millisecond), time.Second)
		l.p.log.Warn("accept failed", zap.Stringer("direction", ln.ln.dir), zap.Error(err), zap.Duration("retry_in", l.backoff))
		l.dropListeners()
		l.acceptPause = time.Now().Add(l.backoff)
		return
	}
}

// stopLoops stops accepting, closes the listeners, waits up to DrainTimeout for the connections to end, then
// closes the rest (logged). Serve calls it once, after setting p.stopping.
func (p *Proxy) stopLoops() {
	e := p.engine
	for _, l := range e.loops {
		l.wake()
	}
	for _, l := range e.loops {
		l.stopped.Wait()
	}
	p.closeListeners()
	done := make(chan struct{})
	go func() {
		for _, l := range e.loops {
			<-l.done
		}
		close(done)
	}()
	t := time.NewTimer(p.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	p.forced.Store(true)
	for _, l := range e.loops {
		l.wake()
	}
	<-done
	p.log.Warn("drain timeout: closed remaining connections", zap.Duration("drain_timeout", p.cfg.DrainTimeout),
		zap.Int64("closed", e.forced.Load()))
}

// closeAll closes every connection of the loop (drain timeout).
func (l *evloop) closeAll() {
	for c := range l.conns {
		l.p.engine.forced.Add(1)
		l.closeConn(c, nil)
	}
}
