package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
)

// BenchmarkConnRR measures one short connection (connect, 1-byte request/response, close) with and without
// the proxy in the path; the difference in allocs/op is the proxy's per-connection cost.
func BenchmarkConnRR(b *testing.B) {
	echoAddr := benchServe(b)
	run := func(b *testing.B, target netip.AddrPort) {
		buf := make([]byte, 1)
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(target))
			if err != nil {
				b.Fatal(err)
			}
			c.Write(buf)
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, echoAddr) })
	for _, mode := range []CopyMode{CopySplice, CopyBuffer} {
		b.Run("proxy-"+mode.String(), func(b *testing.B) {
			res := &fixedResolver{}
			res.set(echoAddr)
			p, err := New(Config{OutboundAddr: "127.0.0.1:0", Resolver: res, Copy: mode, DrainTimeout: time.Second}, zap.NewNop())
			if err != nil {
				b.Fatal(err)
			}
			if err := p.Listen(); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { p.Serve(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			run(b, p.Addr(Outbound))
		})
	}
}

func benchServe(b *testing.B) netip.AddrPort {
	ln, err := listenTCP("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return tcpAddrPort(ln.Addr())
}
