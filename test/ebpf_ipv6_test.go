package test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// origdstRecords decodes the JSON lines nettool origdst printed so far.
func origdstRecords(t *testing.T, p *proc) []map[string]string {
	t.Helper()
	var out []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(p.stdout.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]string
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("origdst output %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// waitOrigdst waits until nettool origdst p has recorded a connection whose original destination is want.
func waitOrigdst(t *testing.T, p *proc, want string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, rec := range origdstRecords(t, p) {
			if rec["origdst"] == want {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SO_ORIGINAL_DST answer %s; origdst printed:\n%s\nstderr:\n%s", want, p.stdout.String(), p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEBPFIPv6Outbound: `meshcap ebpf attach --dual-stack` in a dual-stack pod captures native IPv6 connects to
// [::1]:15001. A plain-socket-API sidecar (nettool origdst, uid 1337) gets the exact destination from
// getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) and delivers it there; the app's getpeername() shows the destination
// it asked for; uid 1337 goes direct; with the sidecar stopped the connect is refused; the meshcap proxy relays
// the same connections. IPv4-mapped connects of the same pod keep going to the IPv4 listener.
func TestEBPFIPv6Outbound(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newDualStackTopology(t)
	ebAttach(t, pin, topo.client, "--netns", topo.client.NetnsPath, "-i", "*", "--dual-stack")
	sidecar := &podnet.Cred{UID: 1337, GID: 1337}
	px6 := startIn(t, topo.client, sidecar, nettoolBin, "origdst", "[::1]:15001")
	px4 := startIn(t, topo.client, sidecar, nettoolBin, "origdst", "127.0.0.1:15001")
	waitListening(t, topo.client, 15001)

	for _, port := range []int{8080, 9090, 7070} {
		target := dst(server6, port)
		res, err := dial(t, topo.client, user, target, 64<<10)
		if err != nil || !res.OK || !res.Captured() || res.Reached != target || res.Echoed != 64<<10 {
			t.Fatalf("IPv6 dial %s: %+v, %v; want captured and delivered there", target, res, err)
		}
		if res.Remote != target {
			t.Errorf("IPv6 dial %s: getpeername %s, want the original destination", target, res.Remote)
		}
		if !strings.HasPrefix(res.Local, "[::1]:") {
			t.Errorf("IPv6 dial %s: client's own address %s, want [::1] (connected to the sidecar)", target, res.Local)
		}
		if rec := waitOrigdst(t, px6, target); !strings.HasPrefix(rec["local"], "[::1]:15001") {
			t.Errorf("SO_ORIGINAL_DST %s answered on %s, want the [::1]:15001 listener", target, rec["local"])
		}
	}
	res, err := dial(t, topo.client, user, dst(mapped, 8080), 100, "-family6")
	if err != nil || !res.Captured() || res.Reached != dst("198.18.0.2", 8080) {
		t.Fatalf("IPv4-mapped dial: %+v, %v; want captured to 198.18.0.2:8080", res, err)
	}
	waitOrigdst(t, px4, dst("198.18.0.2", 8080))
	for name, cred := range map[string]*podnet.Cred{"uid 1337": uid1337, "gid 1337": gid1337} {
		if res, err := dial(t, topo.client, cred, dst(server6, 8080), 100); err != nil || res.Captured() || res.Reached != dst(server6, 8080) {
			t.Errorf("IPv6 dial as %s: %+v, %v; want direct", name, res, err)
		}
	}

	px6.stop()
	px4.stop()
	if res, err := dial(t, topo.client, user, dst(server6, 8080), 10); err == nil || res.OK || !strings.Contains(res.Error, "refused") {
		t.Fatalf("IPv6 dial with the sidecar stopped: %+v, %v; want connection refused (no bypass)", res, err)
	}

	px := startProxy(t, topo.client)
	if res, err := dial(t, topo.client, user, dst(server6, 9090), 1000); err != nil || !res.Captured() || res.Reached != dst(server6, 9090) || res.Remote != dst(server6, 9090) {
		t.Fatalf("IPv6 dial through meshcap proxy: %+v, %v\n%s", res, err, px.stderr.String())
	}
}

// TestEBPFIPv6Inbound: inbound capture of a dual-stack server pod (`ebpf attach -b '*' -d 7070 --dual-stack`)
// steers IPv6 connections to the sidecar's IPv6 listener; the sidecar gets the original destination from
// SOL_IPV6/IP6T_SO_ORIGINAL_DST (nettool origdst) and relays from ::6, which is never steered again, so the app
// sees ::6; the meshcap proxy does the same for IPv6 and IPv4; -d ports go straight to the app; with the sidecar
// stopped captured ports are refused.
func TestEBPFIPv6Inbound(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newDualStackTopology(t)
	ebAttach(t, pin, topo.server, "--netns", topo.server.NetnsPath, "-b", "*", "-d", "7070", "--dual-stack")

	sc := startIn(t, topo.server, &podnet.Cred{UID: 1337, GID: 1337}, nettoolBin, "origdst", "[::]:15006", "::6")
	waitListening(t, topo.server, 15006)
	target := dst(server6, 9090)
	res, err := dial(t, topo.client, user, target, 1000)
	if err != nil || !res.OK || res.Reached != target || !strings.HasPrefix(res.Peer, "[::6]:") {
		t.Fatalf("IPv6 inbound dial %s: %+v, %v; want it relayed by the sidecar from [::6]", target, res, err)
	}
	if rec := waitOrigdst(t, sc, target); rec["local"] != target {
		t.Errorf("inbound SO_ORIGINAL_DST %s, but the accepted socket's address is %s", target, rec["local"])
	}
	sc.stop()

	px := startProxy(t, topo.server, "--pin-dir", pin)
	for _, tc := range []struct{ addr, peer string }{{target, "[::6]:"}, {dst("198.18.0.2", 9090), "127.0.0.6:"}} {
		res, err := dial(t, topo.client, user, tc.addr, 1000)
		if err != nil || !res.OK || res.Reached != tc.addr || !strings.HasPrefix(res.Peer, tc.peer) {
			t.Fatalf("inbound dial %s through meshcap proxy: %+v, %v; want the app to see %s\n%s", tc.addr, res, err, tc.peer, px.stderr.String())
		}
	}
	if res, err := dial(t, topo.client, user, dst(server6, 7070), 100); err != nil || !res.OK || res.Captured() || strings.HasPrefix(res.Peer, "[::6]:") {
		t.Errorf("IPv6 inbound to -d port 7070: %+v, %v; want it straight to the app", res, err)
	}
	px.stop()
	if res, err := dial(t, topo.client, user, target, 10); err == nil || res.OK {
		t.Fatalf("IPv6 inbound with the sidecar stopped: %+v; want it refused", res)
	}
	if res, err := dial(t, topo.client, user, dst(server6, 7070), 10); err != nil || !res.OK {
		t.Errorf("IPv6 inbound to -d port 7070 with the sidecar stopped: %+v, %v; want it to work", res, err)
	}
}
