package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
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
		defer reportCPU(b)()
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
	for _, cfg := range benchConfigs {
		b.Run("proxy-"+benchName(cfg), func(b *testing.B) {
			run(b, benchProxy(b, cfg, echoAddr))
		})
	}
}

// benchProxy serves a proxy with cfg (plus a loopback outbound listener) relaying everything to dst until the
// benchmark ends, and returns its outbound address.
func benchProxy(b *testing.B, cfg Config, dst netip.AddrPort) netip.AddrPort {
	res := &fixedResolver{}
	res.set(dst)
	cfg.OutboundAddr, cfg.Resolver, cfg.DrainTimeout = "127.0.0.1:0", res, time.Second
	p, err := New(cfg, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Serve(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return p.Addr(Outbound)
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

// BenchmarkRR measures request/response exchanges of size bytes on one persistent connection through the proxy,
// for each of benchConfigs (the bench's rr_* tests use 1 B and 1 KiB messages). Client, proxy and echo server
// share this process: the loop engine then pays a wakeup between its thread and Go's netpoller on every message,
// which a separate proxy process pays in both engines; compare engines with `meshcap bench` (perf-notes.md).
func BenchmarkRR(b *testing.B) {
	echoAddr := benchServe(b)
	for _, size := range []int{1, 1024} {
		for _, cfg := range benchConfigs {
			b.Run(fmt.Sprintf("%s-%d", benchName(cfg), size), func(b *testing.B) {
				c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(benchProxy(b, cfg, echoAddr)))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				buf := make([]byte, size)
				b.ReportAllocs()
				defer reportCPU(b)()
				for b.Loop() {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// benchConfigs: the engines (and the goroutine engine's copy modes) the benchmarks compare.
var benchConfigs = []Config{{Engine: EngineLoop}, {Engine: EngineGoroutine, Copy: CopySplice}, {Engine: EngineGoroutine, Copy: CopyBuffer}}

func benchName(c Config) string {
	if c.Engine == EngineGoroutine {
		return c.Engine.String() + "-" + c.Copy.String()
	}
	return c.Engine.String()
}

// reportCPU reports the process's CPU time (user + system, all goroutines: client, proxy and echo server) per
// operation as cpu-ns/op; call the returned function when the loop is done.
func reportCPU(b *testing.B) func() {
	t0 := cpuTime()
	return func() { b.ReportMetric(float64(cpuTime()-t0)/float64(b.N), "cpu-ns/op") }
}

func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
