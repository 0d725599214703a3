package test

// End to end: `meshcap ebpf attach --fast-path` with the real `meshcap proxy` (same binary and flags as without it).
// The proxy learns per connection from its SO_ORIGINAL_DST answer that the client socket is on the sk_msg fast
// path and relays it with read/write; data must arrive intact in both directions, with half-close.

import (
	"strings"
	"testing"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/proxy"
)

func TestEBPFFastPathProxy(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	ebAttach(t, pin, topo.client, "-i", "*", "--fast-path")
	px := startProxy(t, topo.client)

	// 32 MiB up, echoed back down, client half-closes after sending.
	res, err := dial(t, topo.client, nil, "198.18.0.2:8080", 32<<20)
	if err != nil || !res.OK || !res.Captured() || res.Reached != "198.18.0.2:8080" || res.Echoed != 32<<20 {
		t.Fatalf("bulk dial through the proxy: %+v %v", res, err)
	}
	ndests := dialAllCaptured(t, topo.client, user, 4, 256<<10)
	n := uint64(1 + ndests)
	s := pxWaitStats(t, px, "all relayed", func(s proxy.Snapshot) bool { return s.Outbound.Relayed >= n })
	if s.Outbound.FastPath != n || s.Errors.Relay != 0 {
		t.Errorf("proxy stats: %d of %d connections on the fast path, %d relay errors: %+v", s.Outbound.FastPath, n, s.Errors.Relay, s)
	}
	st := ebStatus(t, pin)
	if len(st.Attachments) != 1 {
		t.Fatalf("status: %+v", st)
	}
	fp, err := loader.ReadFastPathStats(st.Attachments[0].PinDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fast path counters: %+v", fp)
	// Every byte crosses the app<->proxy hop twice (up and echoed down); allow the handshake race to send some
	// directions through TCP.
	if fp.RedirectBytes < 32<<20 {
		t.Errorf("fast path not taken: %+v", fp)
	}

	// Proxy stopped: a captured connect is refused, as without the fast path.
	px.stop()
	if res, err := dial(t, topo.client, nil, "198.18.0.2:8080", 10); err == nil || res.OK {
		t.Errorf("dial with the proxy stopped must fail: %+v", res)
	} else if !strings.Contains(res.Error, "refused") {
		t.Errorf("dial with the proxy stopped: %q, want connection refused", res.Error)
	}
}
