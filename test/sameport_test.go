package test

// Issue 12 item 4: eBPF capture must not put every captured socket of a pod into one 4-tuple space. An app that
// binds one source port with SO_REUSEADDR and connects from it to several destinations at once works without
// capture and under iptables mode; in eBPF mode each captured connection goes to its own 127/8 address of the
// sidecar's 0.0.0.0:15001 listener (bpf/include/outbound.h, mc_proxy_addr4), so it works there too.

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestSameSourcePortManyDestinations: one source port, every server address and port of the topology (9
// destinations) at once, in eBPF and iptables mode with meshcap proxy: each connection is captured, reaches its
// exact destination and sees it as its peer.
func TestSameSourcePortManyDestinations(t *testing.T) {
	requireRoot(t)
	var dests []string
	for _, ip := range []string{"198.18.0.2", "198.18.1.2", "198.18.2.2"} {
		for _, port := range serverPorts {
			dests = append(dests, fmt.Sprintf("%s:%d", ip, port))
		}
	}
	for _, b := range []captureBackend{ebpfBackend(ebPinRoot(t)), iptablesBackend} {
		t.Run(b.name, func(t *testing.T) {
			topo := newTopology(t)
			// Without capture first: the baseline the captured runs must match.
			checkSamePort(t, topo, dests, 40000, false)
			if err := b.apply(t, topo.client, []string{"-i", "*"}); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := b.remove(t, topo.client); err != nil {
					t.Errorf("remove: %v", err)
				}
			}()
			startProxy(t, topo.client) // after capture, as istio-init's order (Linux 5.10 needs it: README Limits)
			checkSamePort(t, topo, dests, 40001, true)
		})
	}
}

func checkSamePort(t *testing.T, topo topology, dests []string, port int, captured bool) {
	t.Helper()
	out, err := runIn(t, topo.client, user, nettoolBin, "sameport", strings.Join(dests, ","), "-port", itoa(port))
	var res []DialResult
	if jerr := json.Unmarshal([]byte(out), &res); jerr != nil || len(res) != len(dests) {
		t.Fatalf("sameport from port %d: %v; output %q (%v)", port, err, out, jerr)
	}
	for i, r := range res {
		if !r.OK || r.Reached != dests[i] || r.Remote != dests[i] || r.Captured() != captured ||
			!strings.HasSuffix(r.Local, fmt.Sprintf(":%d", port)) {
			t.Errorf("source port %d -> %s (captured %v wanted): %+v", port, dests[i], captured, r)
		}
	}
	if err != nil {
		t.Errorf("sameport: %v", err)
	}
}

// TestSidecarOn127001Only: a sidecar that listens on 127.0.0.1:15001 only (not 0.0.0.0) still gets every captured
// connection (connect4 finds no listener on the 127/8 address and falls back to 127.0.0.1), but then all of them
// share one 4-tuple space again: a second connect from the same bound source port fails with EADDRNOTAVAIL, as it
// did before the spread (README Limits).
func TestSidecarOn127001Only(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	b := ebpfBackend(ebPinRoot(t))
	if err := b.apply(t, topo.client, []string{"-i", "*"}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := b.remove(t, topo.client); err != nil {
			t.Errorf("remove: %v", err)
		}
	}()
	startProxy(t, topo.client, "--outbound-addr", "127.0.0.1:15001")
	if n := dialAllCaptured(t, topo.client, user, 2, 1000); n != 18 {
		t.Fatalf("dialled %d", n)
	}
	dests := "198.18.0.2:8080,198.18.1.2:9090"
	out, err := runIn(t, topo.client, user, nettoolBin, "sameport", dests, "-port", "40002")
	var res []DialResult
	if jerr := json.Unmarshal([]byte(out), &res); jerr != nil || len(res) != 2 {
		t.Fatalf("sameport: %v; output %q (%v)", err, out, jerr)
	}
	if !res[0].OK || !res[0].Captured() || !strings.Contains(res[1].Error, "cannot assign requested address") {
		t.Fatalf("sidecar on 127.0.0.1 only: want the first connection captured and the second from the same port refused with EADDRNOTAVAIL, got %+v", res)
	}
}
