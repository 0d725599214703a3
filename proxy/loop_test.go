package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoopSlowReceiver: the upstream reads slowly, so the loop's writes come back short or with EAGAIN and the
// rest waits in a pending buffer until EPOLLOUT. Every byte must arrive once and in order, and the counters
// must match.
func TestLoopSlowReceiver(t *testing.T) {
	const size = 32 << 20
	got := make(chan []byte, 1)
	dst := serve(t, func(c *net.TCPConn) {
		h := sha256.New()
		buf := make([]byte, 4<<10)
		var n int
		for {
			k, err := c.Read(buf)
			h.Write(buf[:k])
			n += k
			if err != nil {
				break
			}
			if n < 1<<20 {
				time.Sleep(time.Millisecond) // slow at first: the proxy's writes to it come back short
			}
		}
		got <- h.Sum(nil)
		c.Write([]byte("done"))
	})
	tp := startProxy(t, EngineLoop, Config{Loops: 1})
	tp.res.set(dst)
	c := dialTCP(t, tp.Addr(Outbound))
	payload := make([]byte, size)
	rand.Read(payload)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	want := sha256.Sum256(payload)
	select {
	case h := <-got:
		if !bytes.Equal(h, want[:]) {
			t.Fatal("upstream received different bytes")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("upstream did not receive everything")
	}
	if resp, err := io.ReadAll(c); err != nil || string(resp) != "done" {
		t.Fatalf("response %q, %v", resp, err)
	}
	waitFor(t, func() bool { return tp.Stats().Snapshot().Outbound.Active == 0 })
	if tp.engine.loops[0].stalls == 0 {
		t.Error("no write came back short: the pending-data path was not exercised")
	}
	if s := tp.Stats().Snapshot(); s.Outbound.BytesUp != size || s.Outbound.BytesDown != 4 || s.Errors != (ErrorSnapshot{}) {
		t.Fatalf("stats %+v", s)
	}
}

// TestLoopDialTimeout: an upstream that never answers the SYN (its accept queue is full) fails after DialTimeout;
// the client is reset and the failure counted.
func TestLoopDialTimeout(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	dst := fromSockaddr(sa)
	// Fill the accept queue (never accepted); later SYNs are dropped, so connects to dst hang.
	for range 2 {
		c, err := net.DialTimeout("tcp4", dst.String(), 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	tp := startProxy(t, EngineLoop, Config{DialTimeout: 300 * time.Millisecond})
	tp.res.set(dst)
	start := time.Now()
	if err := refusedOrClosed(t, tp.Addr(Outbound)); err == nil {
		t.Fatal("read succeeded")
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Fatalf("client closed after %s, want about the 300ms dial timeout", d)
	}
	waitFor(t, func() bool { s := tp.Stats().Snapshot(); return s.Errors.Dial == 1 && s.Outbound.Active == 0 })
}

// TestLoopNoGoroutinePerConnection: the loop engine's claim: open connections cost no goroutines.
func TestLoopNoGoroutinePerConnection(t *testing.T) {
	tp := startProxy(t, EngineLoop, Config{})
	tp.res.set(serve(t, echo)) // the test's own echo server starts one goroutine per connection
	base := runtime.NumGoroutine()
	const n = 64
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = dialTCP(t, tp.Addr(Outbound))
		conns[i].Write([]byte{byte(i)})
	}
	b := make([]byte, 1)
	for i, c := range conns {
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("conn %d: %v %v", i, b, err)
		}
	}
	if s := tp.Stats().Snapshot(); s.Outbound.Active != n || s.Outbound.Relayed != n {
		t.Fatalf("stats %+v", s)
	}
	// n echo handlers are expected; the proxy must add (almost) nothing on top.
	if extra := runtime.NumGoroutine() - base - n; extra > 8 {
		t.Fatalf("%d goroutines beyond the echo server's for %d relayed connections", extra, n)
	}
}

// TestLoopStaleEventIgnored: an event stamped with an old generation (the fd was closed and its number reused)
// must not reach the new connection's side.
func TestLoopStaleEventIgnored(t *testing.T) {
	l := &evloop{sides: make([]*side, 8)}
	c := &lconn{}
	c.up = side{fd: 5, gen: 7, c: c, isUp: true}
	l.sides[5] = &c.up
	l.dispatch(unix.EpollEvent{Events: unix.EPOLLOUT, Fd: 5, Pad: 6})
	if c.connected || c.closed {
		t.Fatal("stale event was applied")
	}
}

func TestParseEngine(t *testing.T) {
	for s, want := range map[string]Engine{"loop": EngineLoop, "goroutine": EngineGoroutine} {
		if got, err := ParseEngine(s); err != nil || got != want || got.String() != s {
			t.Errorf("%q: %v %v", s, got, err)
		}
	}
	if _, err := ParseEngine("epoll"); err == nil {
		t.Error(`"epoll" accepted`)
	}
	if err := (&Config{OutboundAddr: "127.0.0.1:1", Loops: -1}).Validate(); err == nil {
		t.Error("negative loops accepted")
	}
}
