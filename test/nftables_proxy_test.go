package test

// `meshcap proxy` behind the nftables backend's REDIRECT rules (istio's inet tables applied by
// `meshcap iptables --native-nftables`): the kernel's SO_ORIGINAL_DST must give the proxy the original destination,
// outbound and inbound. Also `meshcap init --mode auto --native-nftables` when eBPF is unavailable.

import (
	"strings"
	"testing"

	"github.com/meshcap/meshcap/proxy"
)

// TestNftablesProxyOutbound: istio-init's arguments in nftables mode; app connections reach their exact original
// destinations through the proxy; the proxy's own (uid 1337) connections are not captured again.
func TestNftablesProxyOutbound(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	if _, err := runNftCLI(t, topo.client, nil, "", "", istioInitArgs...); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, topo.client, "--no-inbound")
	addrs := []string{"198.18.0.2:8080", "198.18.1.2:9090", "198.18.2.2:7070"}
	for _, addr := range addrs {
		res, err := dial(t, topo.client, user, addr, 1<<20)
		if err != nil || !res.OK || res.Reached != addr || !res.Captured() || res.Echoed != 1<<20 {
			t.Fatalf("dial %s: %+v, %v", addr, res, err)
		}
		if !strings.HasPrefix(res.Peer, "198.18.0.1:") {
			t.Fatalf("dial %s: server saw %s, want the client pod's address", addr, res.Peer)
		}
	}
	if res, err := dial(t, topo.client, pxUID1337, addrs[0], 10); err != nil || !res.OK || res.Captured() {
		t.Fatalf("uid 1337 dial: %+v, %v", res, err)
	}
	s := pxWaitStats(t, p, "3 relayed outbound", func(s proxy.Snapshot) bool {
		return s.Outbound.Relayed == 3 && s.Outbound.Active == 0
	})
	if s.Outbound.Accepted != 3 || s.Errors != (proxy.ErrorSnapshot{}) {
		t.Fatalf("stats %+v", s)
	}
}

// TestNftablesProxyInbound: -b '*' in the server pod; connections from the client pod are redirected to 15006 and
// relayed to the pod's own address and original port, from 127.0.0.6.
func TestNftablesProxyInbound(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	if _, err := runNftCLI(t, topo.server, nil, "", "", "-b", "*", "-d", "15090,15021,15020"); err != nil {
		t.Fatal(err)
	}
	pxCheckInbound(t, topo)
}

// TestNftablesInitAutoFallback: with eBPF unavailable (probe disabled), `init --mode auto --native-nftables`
// chooses nftables, writes istio's tables (no iptables rules, nothing attached) and captures.
func TestNftablesInitAutoFallback(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	pin := ebPinRoot(t)
	log, err := runInitIn(t, topo.client, []string{"MESHCAP_PROBE_DISABLE=connect4"},
		append([]string{"--mode", "auto", "--cgroup", topo.client.CgroupDir, "--pin-root", pin, "--native-nftables"}, istioInitArgs...)...)
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	if !strings.Contains(log, `"mode": "nftables"`) || !strings.Contains(log, "attach:connect4 (disabled by MESHCAP_PROBE_DISABLE)") {
		t.Fatalf("log does not say mode nftables because of attach:connect4")
	}
	if st := ebStatus(t, pin); len(st.Attachments) != 0 {
		t.Fatalf("eBPF attached in nftables mode: %+v", st)
	}
	if rs := nftRuleset(t, topo.client); !strings.Contains(rs, "table inet istio-proxy-nat") {
		t.Fatalf("no istio nft table:\n%s", rs)
	}
	if out, _ := runIn(t, topo.client, nil, "iptables-nft-save"); strings.Contains(out, "ISTIO_") {
		t.Fatalf("iptables rules in nftables mode:\n%s", out)
	}
	startProxy(t, topo.client, "--no-inbound")
	res, err := dial(t, topo.client, user, "198.18.1.2:7070", 1000)
	if err != nil || !res.OK || !res.Captured() || res.Reached != "198.18.1.2:7070" {
		t.Fatalf("dial after init: %+v, %v", res, err)
	}
}
