package test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// dnsEBPFWorld is a client pod captured in eBPF mode with --redirect-dns, a real DNS server on three addresses of
// another pod (198.18.0.2 and fd00:198:18::2 in the client's resolv.conf, 198.18.1.2 not), and the meshcap proxy as
// the sidecar forwarding 15053 to the resolv.conf servers.
type dnsEBPFWorld struct {
	topo    topology
	srv     map[string]*dnsServer // by server address
	resolv  string
	pinRoot string
	answer  netip.Addr
}

const (
	dnsListed   = "198.18.0.2:53"
	dnsUnlisted = "198.18.1.2:53"
	dnsListed6  = "[fd00:198:18::2]:53"
	dnsMapped   = "[::ffff:198.18.0.2]:53"
)

func newDNSEBPFWorld(t *testing.T) *dnsEBPFWorld {
	w := &dnsEBPFWorld{topo: newDualStackTopology(t), srv: map[string]*dnsServer{}, pinRoot: ebPinRoot(t),
		answer: netip.MustParseAddr("10.53.0.9")}
	for _, a := range []string{dnsListed, dnsUnlisted, dnsListed6} {
		w.srv[a] = startDNSServer(t, w.topo.server, a, w.answer)
	}
	w.resolv = filepath.Join(worldDir(t), "resolv.conf")
	if err := os.WriteFile(w.resolv, []byte("nameserver 198.18.0.2\nnameserver fd00:198:18::2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return w
}

// attach runs `meshcap ebpf attach` on the host with the pod's resolv.conf as /etc/resolv.conf (what istio-iptables
// reads where it runs).
func (w *dnsEBPFWorld) attach(t *testing.T, flags ...string) { w.attachEnv(t, nil, flags...) }

// attachEnv is attach with extra environment variables (istio's, such as ISTIO_META_DNS_CAPTURE).
func (w *dnsEBPFWorld) attachEnv(t *testing.T, env []string, flags ...string) {
	t.Helper()
	args := append([]string{"ebpf", "attach", "--pin-dir", w.pinRoot, "--cgroup", w.topo.client.CgroupDir,
		"--netns", w.topo.client.NetnsPath}, flags...)
	if _, err := runMeshcapResolv(t, w.resolv, env, args...); err != nil {
		t.Fatalf("ebpf attach %v: %v", flags, err)
	}
}

// ask queries server as cred and reports whether the answer came through the proxy: the server that answered saw
// the query from another port than the client's own (the proxy's socket). It fails the test when there is no
// answer, or the answer's source (and, for connected sockets, the peer) is not the server asked.
func (w *dnsEBPFWorld) ask(t *testing.T, server, how string, cred *podnet.Cred) (proxied bool) {
	t.Helper()
	name := fmt.Sprintf("%s.%s.%d.test.", how, strings.NewReplacer(":", "-", ".", "-", "[", "", "]", "").Replace(server), time.Now().UnixNano())
	res, err := dnsAsk(t, w.topo.client, cred, server, name, how)
	if err != nil || res.A != w.answer.String() || res.RCode != "RCodeSuccess" {
		t.Fatalf("query %s (%s): %+v, %v", server, how, res, err)
	}
	if want := unmapped(server); res.From != want || (res.Peer != "" && unmapped(res.Peer) != want) {
		t.Errorf("query %s (%s): answer from %s, peer %q: want the server asked", server, how, res.From, res.Peer)
	}
	var from string
	for _, s := range w.srv {
		if f := s.source(name); f != "" {
			from = f
		}
	}
	if from == "" {
		t.Fatalf("query %s (%s): answered, but no server saw %s", server, how, name)
	}
	return portOf(from) != portOf(res.Local)
}

// TestDNSRedirectEBPF: eBPF mode with --redirect-dns against a real DNS server in another pod, with meshcap proxy's
// own 15053 forwarder: UDP (unconnected and connected, also IPv4-mapped from an AF_INET6 socket) and TCP to a
// resolv.conf server are answered through the proxy, and the app sees the answer come from the server it asked
// (recvmsg, getpeername); with the proxy stopped there is no answer; uid 1337 goes direct; a server outside
// resolv.conf goes direct unless --capture-all-dns; an IPv6 server goes direct in a pod istio sees as IPv4 (no
// --dual-stack, so no ip6tables rules); -o 53 exempts DNS as istio's rule 9 does.
func TestDNSRedirectEBPF(t *testing.T) {
	requireRoot(t)
	w := newDNSEBPFWorld(t)
	w.attach(t, "-i", "*", "--redirect-dns")
	px := startProxy(t, w.topo.client, "--no-inbound", "--resolv-conf", w.resolv)

	for _, q := range []struct {
		server, how string
		cred        *podnet.Cred
		proxied     bool
	}{
		{dnsListed, "udp", user, true},
		{dnsListed, "connected", user, true},
		{dnsListed, "tcp", user, true},
		{dnsMapped, "udp", user, true},
		{dnsMapped, "connected", user, true},
		{dnsMapped, "tcp", user, true},
		{dnsListed, "udp", uid1337, false},
		{dnsListed, "tcp", gid1337, false},
		{dnsUnlisted, "udp", user, false},
		{dnsUnlisted, "tcp", user, true}, // not DNS capture: -i '*' sends it to 15001, which relays it as TCP
		{dnsListed6, "udp", user, false},
		{dnsListed6, "connected", user, false},
	} {
		if got := w.ask(t, q.server, q.how, q.cred); got != q.proxied {
			t.Errorf("%s (%s) as %+v: through the proxy = %v, want %v", q.server, q.how, q.cred, got, q.proxied)
		}
	}

	px.stop()
	for _, how := range []string{"udp", "connected", "tcp"} {
		if res, err := dnsAsk(t, w.topo.client, user, dnsListed, "stopped-"+how+".test.", how); err == nil || res.A != "" {
			t.Errorf("query %s (%s) with the proxy stopped: %+v; want no answer", dnsListed, how, res)
		}
	}
	if w.ask(t, dnsListed, "udp", uid1337) {
		t.Error("uid 1337 with the proxy stopped: not direct")
	}

	startProxy(t, w.topo.client, "--no-inbound", "--resolv-conf", w.resolv)
	// istio's environment variables instead of the flags
	w.attachEnv(t, []string{"ISTIO_META_DNS_CAPTURE=true", "CAPTURE_ALL_DNS=true"}, "-i", "198.18.2.0/24")
	for _, how := range []string{"udp", "connected", "tcp"} {
		if !w.ask(t, dnsUnlisted, how, user) {
			t.Errorf("%s (%s) with --capture-all-dns: not through the proxy", dnsUnlisted, how)
		}
	}
	w.attach(t, "-i", "*", "--redirect-dns", "-o", "53")
	for _, how := range []string{"udp", "tcp"} {
		if w.ask(t, dnsListed, how, user) {
			t.Errorf("%s (%s) with -o 53: through the proxy, want direct (rule 9)", dnsListed, how)
		}
	}
}

// TestInitAutoDNSChoosesEBPF: `init --mode auto` with ISTIO_META_DNS_CAPTURE in an IPv4 pod chooses eBPF (DNS is no
// longer a reason to fall back), reads the pod's resolv.conf, and DNS to its server goes through the sidecar.
func TestInitAutoDNSChoosesEBPF(t *testing.T) {
	requireRoot(t)
	w := newDNSEBPFWorld(t)
	bin, argv := inPrivateResolvConf(w.resolv, append([]string{meshcapBin, "init", "--mode", "auto", "--cgroup",
		w.topo.client.CgroupDir, "--pin-root", w.pinRoot, "-b", ""}, istioInitArgs[:len(istioInitArgs)-4]...)...)
	cmd := exec.Command(bin, argv...)
	cmd.Env = append(cmd.Environ(), "ISTIO_META_DNS_CAPTURE=true")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := w.topo.client.Start(cmd, nil); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), `"mode": "ebpf"`) {
		t.Fatalf("init --mode auto with DNS capture: %v; want mode ebpf\n%s", err, out.String())
	}
	startProxy(t, w.topo.client, "--no-inbound", "--resolv-conf", w.resolv)
	for _, how := range []string{"udp", "tcp"} {
		if !w.ask(t, dnsListed, how, user) {
			t.Errorf("%s (%s) after init: not through the proxy", dnsListed, how)
		}
	}
	if w.ask(t, dnsUnlisted, "udp", user) {
		t.Errorf("%s (udp) after init: through the proxy, but it is not in resolv.conf", dnsUnlisted)
	}
}
