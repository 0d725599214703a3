package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// fixedResolver answers every connection with *dst.
type fixedResolver struct {
	dst atomic.Pointer[netip.AddrPort]
}

func (r *fixedResolver) set(a netip.AddrPort) { r.dst.Store(&a) }
func (r *fixedResolver) OriginalDst(Direction, int, netip.AddrPort) (netip.AddrPort, bool, error) {
	if p := r.dst.Load(); p != nil {
		return *p, true, nil
	}
	return netip.AddrPort{}, false, nil
}

type testProxy struct {
	*Proxy
	res  *fixedResolver
	stop context.CancelFunc
	done chan error
}

// engines are the relay engines every behaviour test runs against.
var engines = []Engine{EngineLoop, EngineGoroutine}

// forEachEngine runs test once per engine, as a subtest named after it.
func forEachEngine(t *testing.T, test func(t *testing.T, eng Engine)) {
	for _, eng := range engines {
		t.Run(eng.String(), func(t *testing.T) { test(t, eng) })
	}
}

// startProxy runs a Proxy with engine eng on loopback ports chosen by the kernel; original destinations come
// from a resolver.
func startProxy(t *testing.T, eng Engine, cfg Config) *testProxy {
	t.Helper()
	cfg.Engine = eng
	res := &fixedResolver{}
	if cfg.OutboundAddr == "" && cfg.InboundAddr == "" {
		cfg.OutboundAddr = "127.0.0.1:0"
	}
	cfg.Resolver = res
	p, err := New(cfg, zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp := &testProxy{Proxy: p, res: res, stop: cancel, done: make(chan error, 1)}
	go func() { tp.done <- p.Serve(ctx) }()
	t.Cleanup(func() { tp.shutdown(t) })
	return tp
}

func (tp *testProxy) shutdown(t *testing.T) error {
	tp.stop()
	select {
	case err, ok := <-tp.done:
		if ok {
			close(tp.done)
		}
		return err
	case <-time.After(10 * time.Second):
		t.Error("proxy did not stop")
		return nil
	}
}

// serve runs handler for each connection accepted on a fresh loopback listener.
func serve(t *testing.T, handler func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := listenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handler(c) }()
		}
	}()
	return tcpAddrPort(ln.Addr())
}

func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

func dialTCP(t *testing.T, a netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(a))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

func TestRelayBulkEcho(t *testing.T) {
	for _, cfg := range []Config{{Engine: EngineLoop}, {Engine: EngineGoroutine, Copy: CopySplice}, {Engine: EngineGoroutine, Copy: CopyBuffer}} {
		name := cfg.Engine.String()
		if cfg.Engine == EngineGoroutine {
			name += "-" + cfg.Copy.String()
		}
		t.Run(name, func(t *testing.T) {
			tp := startProxy(t, cfg.Engine, cfg)
			tp.res.set(serve(t, echo))
			c := dialTCP(t, tp.Addr(Outbound))
			const size = 32 << 20
			payload := make([]byte, size)
			rand.Read(payload)
			go func() {
				c.Write(payload)
				c.CloseWrite()
			}()
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil || n != size {
				t.Fatalf("echoed %d bytes, err %v; want %d", n, err, size)
			}
			if want := sha256.Sum256(payload); !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatal("echoed data differs")
			}
			c.Close()
			waitFor(t, func() bool { s := tp.Stats().Snapshot(); return s.Outbound.Active == 0 })
			s := tp.Stats().Snapshot()
			if s.Outbound.Relayed != 1 || s.Outbound.BytesUp != size || s.Outbound.BytesDown != size || s.Errors != (ErrorSnapshot{}) {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

func TestRelayHalfClose(t *testing.T) { forEachEngine(t, testRelayHalfClose) }

func testRelayHalfClose(t *testing.T, eng Engine) {
	tp := startProxy(t, eng, Config{})
	tp.res.set(serve(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c) // until the client's FIN
		c.Write([]byte("got " + string(b)))
	}))
	c := dialTCP(t, tp.Addr(Outbound))
	c.Write([]byte("request"))
	c.CloseWrite()
	resp, err := io.ReadAll(c)
	if err != nil || string(resp) != "got request" {
		t.Fatalf("response %q, %v", resp, err)
	}
}

func TestLoopGuard(t *testing.T) { forEachEngine(t, testLoopGuard) }

func testLoopGuard(t *testing.T, eng Engine) {
	tp := startProxy(t, eng, Config{AdminAddr: "127.0.0.1:0"})
	for _, dst := range []netip.AddrPort{tp.Addr(Outbound), tp.AdminAddr(),
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.9"), tp.Addr(Outbound).Port())} {
		tp.res.set(dst)
		if refusedOrClosed(t, tp.Addr(Outbound)) == nil {
			t.Fatalf("%s: read succeeded", dst)
		}
	}
	if s := tp.Stats().Snapshot(); s.Errors.Loop != 3 || s.Outbound.Relayed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDialFailureClosesClient(t *testing.T) { forEachEngine(t, testDialFailureClosesClient) }

func testDialFailureClosesClient(t *testing.T, eng Engine) {
	tp := startProxy(t, eng, Config{DialTimeout: time.Second})
	ln, _ := listenTCP("127.0.0.1:0")
	dead := tcpAddrPort(ln.Addr())
	ln.Close()
	tp.res.set(dead)
	start := time.Now()
	err := refusedOrClosed(t, tp.Addr(Outbound))
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("read: %v after %s", err, time.Since(start))
	}
	if s := tp.Stats().Snapshot(); s.Errors.Dial != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestNoOriginalDst(t *testing.T) { forEachEngine(t, testNoOriginalDst) }

func testNoOriginalDst(t *testing.T, eng Engine) {
	tp := startProxy(t, eng, Config{}) // resolver unset; a plain loopback connection has no SO_ORIGINAL_DST (or its own)
	if refusedOrClosed(t, tp.Addr(Outbound)) == nil {
		t.Fatal("read succeeded")
	}
	waitFor(t, func() bool { s := tp.Stats().Snapshot(); return s.Errors.OrigDst+s.Errors.Loop == 1 })
}

func TestInboundSource(t *testing.T) { forEachEngine(t, testInboundSource) }

func testInboundSource(t *testing.T, eng Engine) {
	peers := make(chan netip.AddrPort, 1)
	dst := serve(t, func(c *net.TCPConn) { peers <- tcpAddrPort(c.RemoteAddr()); c.Write([]byte("x")) })
	tp := startProxy(t, eng, Config{InboundAddr: "127.0.0.1:0", InboundSource: netip.MustParseAddr(DefaultInboundSource)})
	tp.res.set(dst)
	c := dialTCP(t, tp.Addr(Inbound))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if p := <-peers; p.Addr() != netip.MustParseAddr("127.0.0.6") {
		t.Fatalf("upstream saw peer %s, want 127.0.0.6", p)
	}
}

func TestInboundSourceFallback(t *testing.T) { forEachEngine(t, testInboundSourceFallback) }

func testInboundSourceFallback(t *testing.T, eng Engine) {
	peers := make(chan netip.AddrPort, 1)
	dst := serve(t, func(c *net.TCPConn) { peers <- tcpAddrPort(c.RemoteAddr()); c.Write([]byte("x")) })
	// 192.0.2.1 (TEST-NET-1) is not a local address: bind fails, the proxy falls back.
	tp := startProxy(t, eng, Config{InboundAddr: "127.0.0.1:0", InboundSource: netip.MustParseAddr("192.0.2.1")})
	tp.res.set(dst)
	for range 2 {
		c := dialTCP(t, tp.Addr(Inbound))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if p := <-peers; p.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("upstream saw peer %s, want 127.0.0.1", p)
		}
	}
}

func TestAdminAndStatsFileAndDrain(t *testing.T) { forEachEngine(t, testAdminAndStatsFileAndDrain) }

func testAdminAndStatsFileAndDrain(t *testing.T, eng Engine) {
	path := filepath.Join(t.TempDir(), "stats.json")
	tp := startProxy(t, eng, Config{AdminAddr: "127.0.0.1:0", StatsFile: path, DrainTimeout: 200 * time.Millisecond})
	tp.res.set(serve(t, echo))
	c := dialTCP(t, tp.Addr(Outbound))
	c.Write([]byte("hello"))
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + tp.AdminAddr().String() + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var s Snapshot
	err = json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	// Splice mode counts bytes when a direction ends (or every 4 MiB): not yet here.
	if err != nil || s.Outbound.Active != 1 || s.Outbound.Relayed != 1 {
		t.Fatalf("/stats %+v, %v", s, err)
	}
	if resp, err := http.Get("http://" + tp.AdminAddr().String() + "/debug/pprof/"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("pprof: %v %v", resp, err)
	}
	waitFor(t, func() bool {
		b, _ := os.ReadFile(path)
		var f Snapshot
		return json.Unmarshal(b, &f) == nil && f.Outbound.Relayed == 1
	})
	// Stop with the connection still open: drain times out, the connection is closed, final stats written.
	start := time.Now()
	if err := tp.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stop took %s", d)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil || !(errors.Is(err, io.EOF) || isReset(err)) {
		t.Fatalf("connection not closed by drain: %v", err)
	}
	b, _ := os.ReadFile(path)
	var f Snapshot
	if err := json.Unmarshal(b, &f); err != nil || f.Outbound.Active != 0 || f.Outbound.Relayed != 1 ||
		f.Outbound.BytesUp != 5 || f.Outbound.BytesDown != 5 || f.Errors.Relay != 0 {
		t.Fatalf("final stats file %s (%v)", b, err)
	}
	if _, err := net.Dial("tcp", tp.Addr(Outbound).String()); err == nil {
		t.Fatal("listener still open after stop")
	}
}

// refusedOrClosed connects and reads one byte; the error, nil if a byte arrived. On loopback the proxy's reset
// can arrive before connect() returns, so a failed connect counts too.
func refusedOrClosed(t *testing.T, a netip.AddrPort) error {
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(a))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("connection to %s neither relayed nor closed: %v", a, err)
		return nil
	}
	return err
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOriginalDstInboundLocalAddr: an inbound connection whose local port is not the listener's own (sk_lookup
// steering keeps the original destination as the local address) resolves to its local address, without NAT.
func TestOriginalDstInboundLocalAddr(t *testing.T) {
	p, err := New(Config{InboundAddr: "127.0.0.1:0"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	srv := make(chan *net.TCPConn, 1)
	dst := serve(t, func(c *net.TCPConn) { srv <- c; time.Sleep(time.Second) })
	c := dialTCP(t, dst)
	defer c.Close()
	accepted := <-srv
	listen15006, listen15001 := netip.MustParseAddrPort("127.0.0.1:15006"), netip.MustParseAddrPort("127.0.0.1:15001")
	// As if accepted on a listener on port 15006 although the socket's local port is dst's.
	got, _, err := p.originalDst(Inbound, accepted, listen15006)
	if err != nil || got != dst {
		t.Fatalf("originalDst = %s, %v; want %s", got, err, dst)
	}
	// The outbound listener never trusts the local address: no NAT here, so getsockopt decides (ENOENT or the
	// local address itself, which the loop guard would then refuse).
	if got, _, err := p.originalDst(Outbound, accepted, listen15001); err == nil && got != dst {
		t.Fatalf("outbound originalDst = %s", got)
	}
	// A Resolver answer wins; "no answer" falls through.
	p.cfg.Resolver = ResolverFunc(func(Direction, int, netip.AddrPort) (netip.AddrPort, bool, error) {
		return netip.MustParseAddrPort("[::ffff:198.18.0.9]:80"), true, nil
	})
	if got, _, _ := p.originalDst(Inbound, accepted, listen15006); got != netip.MustParseAddrPort("198.18.0.9:80") {
		t.Fatalf("resolver answer ignored (or not unmapped): %s", got)
	}
	p.cfg.Resolver = ResolverFunc(func(Direction, int, netip.AddrPort) (netip.AddrPort, bool, error) {
		return netip.AddrPort{}, false, errors.New("map miss")
	})
	if got, _, _ := p.originalDst(Inbound, accepted, listen15006); got != dst {
		t.Fatalf("resolver error did not fall through: %s", got)
	}
}

// TestGracefulDrain: after stop, the listener is closed but an active connection keeps working until it ends;
// then Serve returns.
func TestGracefulDrain(t *testing.T) { forEachEngine(t, testGracefulDrain) }

func testGracefulDrain(t *testing.T, eng Engine) {
	tp := startProxy(t, eng, Config{DrainTimeout: 10 * time.Second})
	tp.res.set(serve(t, echo))
	c := dialTCP(t, tp.Addr(Outbound))
	c.Write([]byte("a"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	tp.stop()
	waitFor(t, func() bool {
		c2, err := net.Dial("tcp4", tp.Addr(Outbound).String())
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	c.Write([]byte("b"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("active connection cut during drain: %v", err)
	}
	tp.endLastConn(t, c)
	if s := tp.Stats().Snapshot(); s.Errors.Relay != 0 || s.Outbound.BytesUp != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// endLastConn checks that a stopped proxy's Serve still waits while c (its last connection) is active, then ends c
// and waits for Serve to return.
func (tp *testProxy) endLastConn(t *testing.T, c *net.TCPConn) {
	t.Helper()
	select {
	case err := <-tp.done:
		t.Fatalf("Serve returned (%v) with a connection still active", err)
	case <-time.After(100 * time.Millisecond):
	}
	c.CloseWrite()
	io.Copy(io.Discard, c)
	select {
	case err := <-tp.done:
		close(tp.done)
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the last connection ended")
	}
}
