package test

// End-to-end tests of eBPF inbound capture and the full two-sidecar path, all through the real CLI:
// `meshcap ebpf attach` (outbound on the client pod's cgroup; `-b '*' -d ...` on the server pod's cgroup and netns),
// `meshcap proxy` as the sidecar of each pod, curl and nettool as the apps.
//
//	app (client pod) -> 127.0.0.1:15001 client proxy -> 198.18.0.2:port -> sk_lookup -> server proxy :15006
//	                 -> from 127.0.0.6 -> app (server pod)

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/podnet"
	"github.com/meshcap/meshcap/proxy"
)

// Addresses of the third pod ("ext", no meshcap at all), linked to the server pod by its own veth.
const (
	inbExtIP       = "198.19.7.1"
	inbServerExtIP = "198.19.7.2"
)

// inbStatus is `meshcap status --json` for one netns.
type inbStatus struct {
	Mode       string
	ModeReason string
	Inbound    []loader.InboundInfo
}

func inbStatusOf(t *testing.T, pinRoot string, pod *podnet.Pod) inbStatus {
	t.Helper()
	out, err := exec.Command(meshcapBin, "status", "--json", "--pin-dir", pinRoot, "--netns", pod.NetnsPath).Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st inbStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status output %q: %v", out, err)
	}
	return st
}

// inbFor returns the inbound attachment of pod's netns from a status, or nil.
func inbFor(t *testing.T, st inbStatus, pod *podnet.Pod) *loader.InboundInfo {
	t.Helper()
	cookie, err := loader.InboundCookie(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	for i := range st.Inbound {
		if st.Inbound[i].NetnsCookie == cookie {
			return &st.Inbound[i]
		}
	}
	return nil
}

// inbLinkExt joins ext to server with a second veth pair (198.19.7.1/30 - 198.19.7.2/30).
func inbLinkExt(t *testing.T, ext, server *podnet.Pod) {
	t.Helper()
	sfx := randHex(3)
	va, vb := "vxa"+sfx, "vxb"+sfx
	for _, args := range [][]string{
		{"link", "add", va, "netns", ext.Name, "type", "veth", "peer", "name", vb, "netns", server.Name},
		{"-n", ext.Name, "addr", "add", inbExtIP + "/30", "dev", va},
		{"-n", ext.Name, "link", "set", va, "up"},
		{"-n", server.Name, "addr", "add", inbServerExtIP + "/30", "dev", vb},
		{"-n", server.Name, "link", "set", vb, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// inbStartHTTP serves "<local addr> <peer addr>\n" over HTTP from a listener in pod.
func inbStartHTTP(t *testing.T, pod *podnet.Pod, addr string) {
	t.Helper()
	ln, err := pod.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		fmt.Fprintf(w, "%v %s\n", local, r.RemoteAddr)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// inbCurl runs curl in pod (as cred) and returns what the server app saw: its local address and the peer.
func inbCurl(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, url string) (local, peer netip.AddrPort, err error) {
	t.Helper()
	out, err := runIn(t, pod, cred, "curl", "-sS", "--noproxy", "*", "--max-time", "5", url)
	if err != nil {
		return local, peer, err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return local, peer, fmt.Errorf("curl %s: unexpected body %q", url, out)
	}
	if local, err = netip.ParseAddrPort(f[0]); err == nil {
		peer, err = netip.ParseAddrPort(f[1])
	}
	return local, peer, err
}

// inbWantCurl checks a curl that must reach the app at wantLocal with the peer address wantPeer.
func inbWantCurl(t *testing.T, what string, pod *podnet.Pod, cred *podnet.Cred, url, wantLocal, wantPeer string) {
	t.Helper()
	local, peer, err := inbCurl(t, pod, cred, url)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if local.String() != wantLocal || peer.Addr().String() != wantPeer {
		t.Fatalf("%s: the app saw local %s peer %s, want local %s peer %s", what, local, peer, wantLocal, wantPeer)
	}
}

// inbWantBroken checks that a curl fails (no answer from the app).
func inbWantBroken(t *testing.T, what string, pod *podnet.Pod, cred *podnet.Cred, url string) {
	t.Helper()
	if local, peer, err := inbCurl(t, pod, cred, url); err == nil {
		t.Fatalf("%s: must fail, but the app answered (local %s, peer %s)", what, local, peer)
	}
}

// pxSettledStats waits until the proxy's stats file has been rewritten after the last traffic, then reads it.
func pxSettledStats(t *testing.T, p *proc) proxy.Snapshot {
	t.Helper()
	time.Sleep(3 * proxy.DefaultStatsInterval)
	return pxStats(t, p)
}

// TestInboundTwoSidecar is issue 4's acceptance check: two pods, each with its own meshcap proxy, capture attached
// by the CLI (outbound on the client pod, `-b '*' -d 9090,9091` on the server pod). Captured ports go app -> client
// proxy 15001 -> server proxy 15006 -> app, and the app sees 127.0.0.6; excluded ports reach the app directly; a
// client in a netns with no meshcap is captured inbound; many concurrent connections keep exact destinations;
// stopping either proxy breaks the path (and a restarted proxy registers itself again); detach restores the direct
// path.
func TestInboundTwoSidecar(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	client, server, ext := newPod(t, "cli"), newPod(t, "srv"), newPod(t, "ext")
	linkPods(t, client, server)
	inbLinkExt(t, ext, server)
	if err := server.AddAddr(serverAlt1); err != nil {
		t.Fatal(err)
	}
	inbStartHTTP(t, server, "0.0.0.0:8080") // captured
	inbStartHTTP(t, server, "0.0.0.0:9090") // excluded (-d)
	startEcho(t, server, "0.0.0.0:7070")    // captured
	startEcho(t, server, "0.0.0.0:9091")    // excluded (-d)

	// The server's sidecar starts before the capture: `ebpf attach` must find its listener and register it.
	srvProxy := startProxy(t, server, "--pin-dir", pin)
	waitListening(t, server, 15006)
	ebAttach(t, pin, server, "--netns", server.NetnsPath, "-b", "*", "-d", "9090,9091")
	ebAttach(t, pin, client, "-i", "*")
	cliProxy := startProxy(t, client, "--pin-dir", pin)

	st := inbStatusOf(t, pin, server)
	in := inbFor(t, st, server)
	if st.Mode != "ebpf" || in == nil || !in.Attached || !in.Listener || !in.AllPorts || in.CapturePort != 15006 ||
		fmt.Sprint(in.Ports) != "[9090 9091]" {
		t.Fatalf("status of the server netns after attach: %+v (inbound %+v)", st, in)
	}

	// Through both sidecars; the app sees the proxy's inbound source address 127.0.0.6.
	inbWantCurl(t, "client -> captured port", client, user, "http://198.18.0.2:8080/", "198.18.0.2:8080", "127.0.0.6")
	pxWaitStats(t, cliProxy, "client outbound accepted", func(s proxy.Snapshot) bool { return s.Outbound.Accepted >= 1 })
	pxWaitStats(t, srvProxy, "server inbound relayed", func(s proxy.Snapshot) bool { return s.Inbound.Relayed >= 1 })

	// Excluded port: still captured outbound by the client's sidecar, but reaches the app directly (from the client
	// pod's address), not through the server's sidecar.
	before := pxSettledStats(t, srvProxy).Inbound.Accepted
	inbWantCurl(t, "client -> excluded port", client, user, "http://198.18.0.2:9090/", "198.18.0.2:9090", clientIP.Addr().String())
	if after := pxSettledStats(t, srvProxy).Inbound.Accepted; after != before {
		t.Errorf("the excluded port went through the server's sidecar (inbound accepted %d -> %d)", before, after)
	}

	// A client with no meshcap in its netns is captured inbound all the same.
	inbWantCurl(t, "ext -> captured port", ext, nil, "http://"+inbServerExtIP+":8080/", inbServerExtIP+":8080", "127.0.0.6")
	inbWantCurl(t, "ext -> excluded port", ext, nil, "http://"+inbServerExtIP+":9090/", inbServerExtIP+":9090", inbExtIP)

	// Many concurrent connections, captured and excluded ports, two server addresses: exact destinations.
	var dests []string
	for i := 0; i < 6; i++ {
		for _, d := range []string{"198.18.0.2:7070", "198.18.1.2:7070", "198.18.0.2:9091", "198.18.1.2:9091"} {
			dests = append(dests, d)
		}
	}
	results, errs := make([]DialResult, len(dests)), make([]error, len(dests))
	var wg sync.WaitGroup
	for i, d := range dests {
		wg.Add(1)
		go func() { defer wg.Done(); results[i], errs[i] = dial(t, client, user, d, 64<<10) }()
	}
	wg.Wait()
	for i, d := range dests {
		r := results[i]
		wantPeer := "127.0.0.6"
		if strings.HasSuffix(d, ":9091") {
			wantPeer = clientIP.Addr().String()
		}
		peer, _ := netip.ParseAddrPort(r.Peer)
		if errs[i] != nil || !r.OK || r.Reached != d || r.Remote != d || r.Echoed != 64<<10 || peer.Addr().String() != wantPeer {
			t.Errorf("concurrent dial %s: %+v %v (want the app to see peer %s)", d, r, errs[i], wantPeer)
		}
	}

	// The server's sidecar down: captured ports are refused (fail closed), excluded ones still work.
	srvProxy.stop()
	inbWantBroken(t, "client -> captured port, server sidecar stopped", client, user, "http://198.18.0.2:8080/")
	inbWantBroken(t, "ext -> captured port, server sidecar stopped", ext, nil, "http://"+inbServerExtIP+":8080/")
	inbWantCurl(t, "client -> excluded port, server sidecar stopped", client, user, "http://198.18.0.2:9090/", "198.18.0.2:9090", clientIP.Addr().String())
	if in := inbFor(t, inbStatusOf(t, pin, server), server); in == nil || in.Listener || in.Stats.DropNoListener == 0 {
		t.Errorf("status with the server sidecar stopped: want no listener and refusals counted: %+v", in)
	}

	// A restarted server sidecar registers its listener itself.
	srvProxy = startProxy(t, server, "--pin-dir", pin)
	waitListening(t, server, 15006)
	if !srvProxy.waitStderr("registered the inbound listener") { // logged after its listeners opened
		t.Errorf("restarted server proxy did not register itself:\n%s", srvProxy.stderr.String())
	}
	inbWantCurl(t, "client -> captured port, server sidecar restarted", client, user, "http://198.18.0.2:8080/", "198.18.0.2:8080", "127.0.0.6")

	// The client's sidecar down: the client's captured connections break; others reach the server's sidecar.
	cliProxy.stop()
	inbWantBroken(t, "client -> captured port, client sidecar stopped", client, user, "http://198.18.0.2:8080/")
	inbWantCurl(t, "ext -> captured port, client sidecar stopped", ext, nil, "http://"+inbServerExtIP+":8080/", inbServerExtIP+":8080", "127.0.0.6")
	cliProxy = startProxy(t, client, "--pin-dir", pin)
	inbWantCurl(t, "client -> captured port, client sidecar restarted", client, user, "http://198.18.0.2:8080/", "198.18.0.2:8080", "127.0.0.6")

	// Status: the mode line of each netns.
	for _, c := range []struct {
		pod  *podnet.Pod
		want string
	}{{server, "ebpf"}, {ext, "none"}} {
		out, err := exec.Command(meshcapBin, "status", "--pin-dir", pin, "--netns", c.pod.NetnsPath).Output()
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if first, _, _ := strings.Cut(string(out), "\n"); first != "mode: "+c.want {
			t.Errorf("status --netns %s: first line %q, want %q\n%s", c.pod.Name, first, "mode: "+c.want, out)
		}
	}

	// Inside the client pod (its cgroup has outbound capture; its netns has no inbound capture): ebpf.
	if out, err := runIn(t, client, nil, meshcapBin, "status", "--pin-dir", pin); err != nil || !strings.HasPrefix(out, "mode: ebpf\n") {
		t.Errorf("status inside the client pod: want mode: ebpf (from its cgroup): %v\n%s", err, out)
	}
	// ISTIO chains in a netns: iptables.
	if out, err := runIn(t, ext, nil, "iptables-nft", "-t", "nat", "-N", "ISTIO_INBOUND"); err != nil {
		t.Fatalf("create an ISTIO chain in the ext pod: %v %s", err, out)
	}
	if out, err := exec.Command(meshcapBin, "status", "--pin-dir", pin, "--netns", ext.NetnsPath).Output(); err != nil || !strings.HasPrefix(string(out), "mode: iptables\n") {
		t.Errorf("status --netns of a pod with ISTIO chains: want mode: iptables: %v\n%s", err, out)
	}

	// Detach the server pod: its app is reached directly again (no sidecar in between), the client's still relays.
	if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pin, "--cgroup", server.CgroupDir, "--netns", server.NetnsPath); err != nil {
		t.Fatalf("detach server: %v\n%s", err, out)
	}
	inbWantCurl(t, "ext -> captured port after detach", ext, nil, "http://"+inbServerExtIP+":8080/", inbServerExtIP+":8080", inbExtIP)
	inbWantCurl(t, "client -> port 8080 after detaching the server", client, user, "http://198.18.0.2:8080/", "198.18.0.2:8080", clientIP.Addr().String())
	if st := inbStatusOf(t, pin, server); st.Mode != "none" || inbFor(t, st, server) != nil {
		t.Errorf("status of the server netns after detach: %+v", st)
	}
	// Detach the client pod too: fully direct.
	if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pin, "--cgroup", client.CgroupDir); err != nil {
		t.Fatalf("detach client: %v\n%s", err, out)
	}
	if r, err := dial(t, client, user, "198.18.0.2:7070", 100); err != nil || !r.OK || r.Captured() || r.Reached != "198.18.0.2:7070" {
		t.Errorf("after detaching both pods the connection must be direct: %+v %v", r, err)
	}
}

// TestInboundCLIAttachDetach: re-attaching without -b removes inbound capture, `ebpf detach` without arguments
// removes every inbound attachment, and a bad --netns is named and attaches nothing.
func TestInboundCLIAttachDetach(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	a, b := newPod(t, "ia"), newPod(t, "ib")
	for _, p := range []*podnet.Pod{a, b} {
		ebAttach(t, pin, p, "--netns", p.NetnsPath, "-b", "8080,9090")
	}
	if in := inbFor(t, inbStatusOf(t, pin, a), a); in == nil || in.AllPorts || fmt.Sprint(in.Ports) != "[8080 9090]" || in.Listener {
		t.Fatalf("inbound of pod a after attach -b 8080,9090: %+v", in)
	}
	ebAttach(t, pin, a, "--netns", a.NetnsPath, "-i", "*") // no -b: inbound goes
	st := inbStatusOf(t, pin, a)
	if inbFor(t, st, a) != nil || inbFor(t, st, b) == nil {
		t.Fatalf("after re-attaching pod a without -b, want only pod b's inbound: %+v", st.Inbound)
	}
	if st.Mode != "none" {
		t.Errorf("status --netns of pod a (outbound attached to its cgroup, inbound not): mode %q, want none (the caller's cgroup is not checked with --netns)", st.Mode)
	}

	bad := b.NetnsPath + "-missing"
	out, err := runMeshcap(t, "ebpf", "attach", "--pin-dir", pin, "--cgroup", b.CgroupDir, "--netns", bad, "-b", "*")
	if err == nil || !strings.Contains(out, bad) {
		t.Errorf("attach with a bad --netns: err %v, output %q, want it to name %s", err, out, bad)
	}

	if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pin); err != nil {
		t.Fatalf("detach all: %v\n%s", err, out)
	}
	if st := inbStatusOf(t, pin, b); len(st.Inbound) != 0 || st.Mode != "none" {
		t.Errorf("after `ebpf detach` everything must be gone: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := exec.CommandContext(ctx, meshcapBin, "status", "--pin-dir", pin).Run(); err != nil {
		t.Errorf("status after detach: %v", err)
	}
}
