package test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// IPv6 addresses of the dual-stack topology, added after the IPv4 ones (so istio's detection without
// --dual-stack sees IPv4 first, as in a typical dual-stack Kubernetes pod).
const (
	client6Addr   = "fd00:198:18::1"
	client6Prefix = client6Addr + "/64"
	server6Prefix = "fd00:198:18::2/64"
)

// newDualStackTopology is newTopology with an IPv6 address on both pods (no duplicate address detection, so it is
// usable at once). The echo servers on 0.0.0.0 (Go listens dual-stack there) answer on it too.
func newDualStackTopology(t *testing.T) topology {
	t.Helper()
	topo := newTopology(t)
	for _, s := range []struct {
		pod *podnet.Pod
		pfx string
	}{{topo.client, client6Prefix}, {topo.server, server6Prefix}} {
		if out, err := exec.Command("ip", "-n", s.pod.Name, "addr", "add", s.pfx, "dev", s.pod.Veth, "nodad").CombinedOutput(); err != nil {
			t.Fatalf("add %s to %s: %v: %s", s.pfx, s.pod.Name, err, out)
		}
	}
	return topo
}

// dialFamily is dial, from an AF_INET6 socket when family6 is set (IPv4-mapped destinations).
func dialFamily(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, addr string, family6 bool) (DialResult, error) {
	t.Helper()
	if family6 {
		return dial(t, pod, cred, addr, 1000, "-family6")
	}
	return dial(t, pod, cred, addr, 1000)
}

// TestDualStackIptablesProxy: in a dual-stack pod with istio's rules (--dual-stack) and meshcap proxy's default
// listeners, IPv6 and IPv4-mapped connects reach their exact destination through the proxy; with the proxy
// stopped they fail (no silent bypass); as uid 1337 they go direct.
func TestDualStackIptablesProxy(t *testing.T) {
	requireRoot(t)
	topo := newDualStackTopology(t)
	if out, err := runIn(t, topo.client, nil, meshcapBin, "iptables", "-i", "*", "--dual-stack"); err != nil {
		t.Fatalf("iptables: %v %s", err, out)
	}
	px := startProxy(t, topo.client, "--no-inbound")
	targets := []struct {
		addr, reached string
		family6       bool
	}{
		{dst(server6, 8080), dst(server6, 8080), false},
		{dst(mapped, 9090), dst("198.18.0.2", 9090), true},
		{dst("198.18.0.2", 7070), dst("198.18.0.2", 7070), true}, // plain IPv4 from an AF_INET6 socket
	}
	for _, tg := range targets {
		res, err := dialFamily(t, topo.client, user, tg.addr, tg.family6)
		if err != nil || res.Reached != tg.reached || !res.Captured() {
			t.Fatalf("dial %s: %+v, %v; want captured, reaching %s\nproxy:\n%s", tg.addr, res, err, tg.reached, px.stderr.String())
		}
		if res.Remote != tg.addr && unmapped(res.Remote) != tg.reached {
			t.Errorf("dial %s: getpeername %s", tg.addr, res.Remote)
		}
		if res, err := dialFamily(t, topo.client, uid1337, tg.addr, tg.family6); err != nil || res.Captured() || res.Reached != tg.reached {
			t.Errorf("dial %s as uid 1337: %+v, %v; want direct", tg.addr, res, err)
		}
	}
	if !strings.Contains(px.stderr.String(), "[::1]:15001") {
		t.Errorf("proxy did not log its IPv6 outbound listener:\n%s", px.stderr.String())
	}
	px.stop()
	for _, tg := range targets {
		if res, err := dialFamily(t, topo.client, user, tg.addr, tg.family6); err == nil || res.OK {
			t.Errorf("dial %s with the proxy stopped: %+v; want it to fail (captured, nobody listening)", tg.addr, res)
		}
	}
}

// TestDualStackIptablesInbound: istio's inbound rules in a dual-stack server pod send IPv6 and IPv4 connections to
// the proxy's [::]:15006 and 0.0.0.0:15006; it relays each to its original destination from istio's passthrough
// source (::6, 127.0.0.6), which the rules return, so the app sees that source and nothing loops.
func TestDualStackIptablesInbound(t *testing.T) {
	requireRoot(t)
	topo := newDualStackTopology(t)
	if out, err := runIn(t, topo.server, nil, meshcapBin, "iptables", "-b", "*", "--dual-stack"); err != nil {
		t.Fatalf("iptables: %v %s", err, out)
	}
	px := startProxy(t, topo.server)
	for _, tc := range []struct{ addr, peerHost string }{
		{dst(server6, 9090), "[::6]"},
		{dst("198.18.0.2", 9090), "127.0.0.6"},
	} {
		res, err := dial(t, topo.client, user, tc.addr, 1000)
		if err != nil || !res.OK || res.Reached != tc.addr || !strings.HasPrefix(res.Peer, tc.peerHost+":") {
			t.Fatalf("dial %s: %+v, %v; want it relayed by the server's proxy from %s\n%s", tc.addr, res, err, tc.peerHost, px.stderr.String())
		}
	}
	px.stop()
	if res, err := dial(t, topo.client, user, dst(server6, 9090), 10); err == nil || res.OK {
		t.Fatalf("IPv6 inbound with the proxy stopped: %+v; want it refused", res)
	}
}
