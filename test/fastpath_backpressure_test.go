package test

// Backpressure through the sk_msg fast path, measured: an app pushes to a peer that never reads, through
// `meshcap proxy`. Without the fast path (what init, the agent and `ebpf attach` do by default) the sender is held
// back once the socket buffers on the way are full. With --fast-path the kernel releases the sender's buffer
// charge at redirect time, so nothing holds it back (docs/dev/perf-notes.md): the fast path stays opt-in and off
// in every default, which this file also checks.

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/bench"
	"github.com/meshcap/meshcap/pkg/podnet"
	"github.com/meshcap/meshcap/proxy"
)

// bpPushCap bounds the push: enough to tell a bound of socket-buffer size (a few MiB to a few tens) from no bound,
// small enough not to push the whole machine's TCP memory (tcp_mem) into pressure, as the 1 GiB did.
const bpPushCap = 256 << 20

// bpPushResult mirrors nettool's PushResult.
type bpPushResult struct {
	Accepted int64
	Blocked  bool
	Error    string
}

// bpSink listens on addr in pod and accepts connections it never reads; they are closed when the test ends.
func bpSink(t *testing.T, pod *podnet.Pod, addr string) {
	t.Helper()
	ln, err := pod.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
}

// bpPush pushes bpPushCap bytes from an app in pod to addr. A write error fails the test unless writeErrOK (the
// fast path: on a small machine the unbounded push ends in ENOMEM, the node's TCP memory exhausted).
func bpPush(t *testing.T, pod *podnet.Pod, addr string, writeErrOK bool) bpPushResult {
	t.Helper()
	out, err := runIn(t, pod, user, nettoolBin, "push", addr, "-max", strconv.Itoa(bpPushCap), "-stall", "1s")
	var r bpPushResult
	if jerr := json.Unmarshal([]byte(out), &r); err != nil || jerr != nil || (r.Error != "" && !writeErrOK) {
		t.Fatalf("push to %s: %+v %v %v", addr, r, err, jerr)
	}
	return r
}

func TestFastPathBackpressure(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	bpSink(t, topo.server, "0.0.0.0:6060")

	// Default capture (meshcap init, istio-init's arguments): the fast path is off, the sender is held back.
	initEBPFIn(t, topo.client, pin)
	px := startProxy(t, topo.client)
	def := bpPush(t, topo.client, "198.18.0.2:6060", false)
	t.Logf("default path: %d bytes (%.1f MiB) accepted before the sender was held back: %v", def.Accepted, float64(def.Accepted)/(1<<20), def.Blocked)
	// The bound: app sndbuf + proxy rcvbuf + one proxy read + proxy sndbuf + peer rcvbuf, each at most tcp_wmem /
	// tcp_rmem's maximum (4 + 32 + 0.25 + 4 + 32 MiB here).
	if bound := bpBufferBound(t); !def.Blocked || def.Accepted > bound {
		t.Errorf("default path: %d bytes accepted (held back: %v), want held back within %d bytes", def.Accepted, def.Blocked, bound)
	}
	res, err := dial(t, topo.client, user, "198.18.0.2:8080", 8<<20)
	if err != nil || !res.OK || !res.Captured() {
		t.Fatalf("default path: integrity both ways next to the held push: %+v %v", res, err)
	}
	if s := pxWaitStats(t, px, "relayed", func(s proxy.Snapshot) bool { return s.Outbound.Relayed >= 2 }); s.Outbound.FastPath != 0 {
		t.Errorf("default capture put %d connections on the fast path: it must be opt-in", s.Outbound.FastPath)
	}
	px.stop()

	// --fast-path: data intact both ways on it; then the push, measured, not bounded (no backpressure).
	ebAttach(t, pin, topo.client, "-i", "*", "--fast-path")
	px = startProxy(t, topo.client)
	res, err = dial(t, topo.client, user, "198.18.0.2:8080", 8<<20)
	if err != nil || !res.OK || !res.Captured() {
		t.Fatalf("--fast-path: integrity both ways (before the push: once it has run, a small machine may be out of TCP memory): %+v %v", res, err)
	}
	fp := bpPush(t, topo.client, "198.18.0.2:6060", true)
	t.Logf("--fast-path: %d bytes (%.1f MiB) accepted of a %d MiB push, held back: %v, write error: %q", fp.Accepted,
		float64(fp.Accepted)/(1<<20), bpPushCap>>20, fp.Blocked, fp.Error)
	if s := pxWaitStats(t, px, "relayed", func(s proxy.Snapshot) bool { return s.Outbound.Relayed >= 2 }); s.Outbound.FastPath == 0 {
		t.Errorf("--fast-path: no connection on the fast path: %+v", s)
	}
	px.stop() // frees what the proxy's socket holds
}

// bpBufferBound is the most the sockets between the app and a non-reading peer can hold with the machine's
// tcp_wmem/tcp_rmem maxima: two send buffers, two receive buffers and one proxy read.
func bpBufferBound(t *testing.T) int64 {
	t.Helper()
	maxOf := func(name string) int64 {
		b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv4", name))
		f := strings.Fields(string(b))
		if err != nil || len(f) != 3 {
			t.Fatalf("read %s: %v", name, err)
		}
		v, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return 2*maxOf("tcp_wmem") + 2*maxOf("tcp_rmem") + 256<<10
}

// TestFastPathOffByDefault: no default turns the fast path on: the benchmark's default scenarios (its headline
// numbers), the deploy manifests, and the capture commands (init and the agent pass no fast-path option; only
// `ebpf attach --fast-path` does).
func TestFastPathOffByDefault(t *testing.T) {
	for _, name := range bench.DefaultScenarios {
		if strings.Contains(name, "fastpath") {
			continue // the named comparison row, not a headline
		}
		sc := bench.Builtin()[name]
		if b, _ := json.Marshal(sc); strings.Contains(string(b), "--fast-path") {
			t.Errorf("benchmark scenario %q uses --fast-path: headline numbers must come from the default path", name)
		}
	}
	err := filepath.WalkDir("../deploy", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(b), "fast-path") {
			t.Errorf("%s turns on the fast path", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if (loader.LoadOptions{}).FastPath {
		t.Error("loader.LoadOptions' zero value has the fast path on")
	}
}
