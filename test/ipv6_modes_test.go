package test

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// newIPv6OnlyTopology is the dual-stack topology whose client pod then loses its IPv4 address: an IPv6-only pod,
// where istio enables IPv6 without --dual-stack (its first address is IPv6).
func newIPv6OnlyTopology(t *testing.T) topology {
	t.Helper()
	topo := newDualStackTopology(t)
	if out, err := exec.Command("ip", "-n", topo.client.Name, "addr", "del", clientIP.String(), "dev", topo.client.Veth).CombinedOutput(); err != nil {
		t.Fatalf("remove %s from the client pod: %v: %s", clientIP, err, out)
	}
	return topo
}

// ipv6Observations captures topo's client pod with `meshcap init --mode mode` and istio-init's arguments, runs
// a fixed set of IPv6 connections (outbound as an app and as uid 1337, to ::1, inbound to a captured and to a -d
// port, and the captured ones again with the sidecar stopped) and returns what each did, in words that do not
// depend on the mode (captured or not, where it ended, the source the app saw).
func ipv6Observations(t *testing.T, topo topology, mode string, extra ...string) []string {
	t.Helper()
	pin := ebPinRoot(t)
	args := append(append([]string{"--mode", mode, "--cgroup", topo.client.CgroupDir, "--pin-root", pin}, extra...), istioInitArgs...)
	if log, err := runInitIn(t, topo.client, nil, args...); err != nil || !strings.Contains(log, `"mode": "`+mode+`"`) {
		t.Fatalf("init --mode %s: %v\n%s", mode, err, log)
	}
	startEcho(t, topo.client, dst("0.0.0.0", ownPort))
	startEcho(t, topo.client, dst("0.0.0.0", 15021)) // a -d port of istio-init's arguments
	startEcho(t, topo.client, dst("[::1]", ownPort6))
	own := func(port int) string { return dst("["+client6Addr+"]", port) }
	type probe struct {
		name, from, addr string
		asProxy          bool
	}
	probes := []probe{
		{"outbound", "client", dst(server6, 8080), false},
		{"outbound uid 1337", "client", dst(server6, 9090), true},
		{"outbound ::1", "client", dst("[::1]", ownPort6), false},
		{"inbound", "server", own(ownPort), false},
		{"inbound -d port", "server", own(15021), false},
	}
	var obs []string
	run := func(tag string, p probe) {
		pod, cred := topo.client, user
		if p.from == "server" {
			pod = topo.server
		}
		if p.asProxy {
			cred = uid1337
		}
		res, _ := dial(t, pod, cred, p.addr, 100)
		peer := "-"
		if p.from == "server" && res.OK {
			peer = strings.Split(strings.TrimPrefix(res.Peer, "["), "]")[0] // the source the app saw
		}
		obs = append(obs, fmt.Sprintf("%s%s: ok=%v captured=%v reached=%s app saw %s", tag, p.name, res.OK, res.Captured(), res.Reached, peer))
	}
	px := startProxy(t, topo.client, "--pin-dir", pin)
	for _, p := range probes {
		run("", p)
	}
	px.stop()
	for _, p := range probes {
		run("sidecar stopped, ", p)
	}
	return obs
}

// TestIPv6PodModesAgree: an IPv6-only pod and a dual-stack pod (--dual-stack) captured by `meshcap init` in eBPF
// mode and in iptables mode see exactly the same IPv6 behaviour, and that behaviour is istio's: IPv6 outbound and
// inbound through the sidecar (inbound from ::6), uid 1337, ::1 and -d ports direct, captured connections refused
// with the sidecar stopped.
func TestIPv6PodModesAgree(t *testing.T) {
	requireRoot(t)
	want := []string{
		"outbound: ok=true captured=true reached=" + dst(server6, 8080) + " app saw -",
		"outbound uid 1337: ok=true captured=false reached=" + dst(server6, 9090) + " app saw -",
		"outbound ::1: ok=true captured=false reached=" + dst("[::1]", ownPort6) + " app saw -",
		"inbound: ok=true captured=true reached=" + dst("["+client6Addr+"]", ownPort) + " app saw ::6",
		"inbound -d port: ok=true captured=false reached=" + dst("["+client6Addr+"]", 15021) + " app saw fd00:198:18::2",
		"sidecar stopped, outbound: ok=false captured=false reached= app saw -",
		"sidecar stopped, outbound uid 1337: ok=true captured=false reached=" + dst(server6, 9090) + " app saw -",
		"sidecar stopped, outbound ::1: ok=true captured=false reached=" + dst("[::1]", ownPort6) + " app saw -",
		"sidecar stopped, inbound: ok=false captured=false reached= app saw -",
		"sidecar stopped, inbound -d port: ok=true captured=false reached=" + dst("["+client6Addr+"]", 15021) + " app saw fd00:198:18::2",
	}
	for _, pod := range []struct {
		name  string
		topo  func(*testing.T) topology
		extra []string
	}{
		{"ipv6-only", newIPv6OnlyTopology, nil},
		{"dual-stack", newDualStackTopology, []string{"--dual-stack"}},
	} {
		t.Run(pod.name, func(t *testing.T) {
			got := map[string][]string{}
			for _, mode := range []string{"ebpf", "iptables"} {
				got[mode] = ipv6Observations(t, pod.topo(t), mode, pod.extra...)
				if !slices.Equal(got[mode], want) {
					t.Errorf("%s mode:\n got  %s\n want %s", mode, strings.Join(got[mode], "\n      "), strings.Join(want, "\n      "))
				}
			}
			if !slices.Equal(got["ebpf"], got["iptables"]) {
				t.Errorf("the modes differ:\n ebpf     %s\n iptables %s", strings.Join(got["ebpf"], "\n          "), strings.Join(got["iptables"], "\n          "))
			}
		})
	}
}
