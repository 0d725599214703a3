package test

// An unmodified sidecar that knows nothing about meshcap: Debian's HAProxy as the pod's only proxy, outbound on
// 15001 and inbound on 15006, started as uid 1337 AFTER `meshcap init` has exited, restarted and stopped. Inbound
// capture must find its listener by itself (bpf/inbound_bind.c + inbound_sockops.c), never an app's.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// scHAProxyConfig is a full sidecar: outbound frontend on 127.0.0.1:15001, inbound frontend on 0.0.0.0:15006,
// both forwarding to the original destination (server 0.0.0.0: SO_ORIGINAL_DST, falling back to the local
// address), inbound from 127.0.0.6 as istio's Envoy does.
const scHAProxyConfig = `global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend outbound
    bind 127.0.0.1:15001
    default_backend outbound_orig
backend outbound_orig
    server orig 0.0.0.0
frontend inbound
    bind 0.0.0.0:15006
    default_backend inbound_orig
backend inbound_orig
    source 127.0.0.6
    server orig 0.0.0.0
`

var scProxyCred = &podnet.Cred{UID: 1337, GID: 1337}

// scHAProxy returns the haproxy binary and a checked sidecar config file, or skips (fails under CI).
func scHAProxy(t *testing.T) (bin, cfg string) {
	t.Helper()
	bin = requireTool(t, "haproxy")
	cfg = filepath.Join(worldDir(t), "sidecar.cfg")
	if err := os.WriteFile(cfg, []byte(scHAProxyConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	return bin, cfg
}

// initEBPFIn runs `meshcap init --mode ebpf` with istio-init's arguments inside pod (its cgroup and netns) and
// lets it exit, as istio-init does before the sidecar starts.
func initEBPFIn(t *testing.T, pod *podnet.Pod, pin string) {
	t.Helper()
	if _, err := runInitIn(t, pod, nil, append([]string{"--mode", "ebpf", "--cgroup", pod.CgroupDir, "--pin-root", pin}, istioInitArgs...)...); err != nil {
		t.Fatalf("init in %s: %v", pod.Name, err)
	}
}

// scStartHAProxy starts HAProxy with cfg in pod as the proxy uid and waits for its inbound listener.
func scStartHAProxy(t *testing.T, pod *podnet.Pod, bin, cfg string) *proc {
	t.Helper()
	p := startIn(t, pod, scProxyCred, bin, "-db", "-f", cfg)
	waitListening(t, pod, 15006)
	return p
}

// scExpectInbound dials addr in the server pod from the client pod and wants it relayed by the sidecar: reached,
// data intact, and the app saw the connection come from 127.0.0.6.
func scExpectInbound(t *testing.T, client *podnet.Pod, addr, when string) {
	t.Helper()
	res, err := dial(t, client, nil, addr, 256<<10)
	if err != nil || !res.OK || res.Reached != addr || res.Echoed != 256<<10 || !strings.HasPrefix(res.Peer, "127.0.0.6:") {
		t.Fatalf("%s: inbound %s: want relayed from 127.0.0.6 with data intact, got %+v %v", when, addr, res, err)
	}
}

func scExpectRefused(t *testing.T, client *podnet.Pod, addr, when string) {
	t.Helper()
	res, err := dial(t, client, nil, addr, 10)
	if err == nil || res.OK || !strings.Contains(res.Error, "refused") {
		t.Fatalf("%s: inbound %s: want connection refused (fail closed), got %+v %v", when, addr, res, err)
	}
}

// scWithin retries fn until it succeeds or d has passed since start; it returns the last error.
func scWithin(start time.Time, d time.Duration, fn func() error) error {
	for {
		err := fn()
		if err == nil || time.Since(start) > d {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func scDialOK(t *testing.T, client *podnet.Pod, addr string) error {
	res, err := dial(t, client, nil, addr, 1000)
	if err != nil || !res.OK || !strings.HasPrefix(res.Peer, "127.0.0.6:") {
		return fmt.Errorf("%+v %v", res, err)
	}
	return nil
}

// TestSidecarHAProxyPerPod: per-pod mode, istio-init's arguments, HAProxy started after init exited.
func TestSidecarHAProxyPerPod(t *testing.T) {
	requireRoot(t)
	bin, cfg := scHAProxy(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	startEcho(t, topo.client, "0.0.0.0:8081")
	initEBPFIn(t, topo.server, pin)
	scExpectRefused(t, topo.client, "198.18.0.2:8080", "no sidecar yet")

	hp := scStartHAProxy(t, topo.server, bin, cfg)
	scExpectInbound(t, topo.client, "198.18.0.2:8080", "haproxy started after init")
	scExpectInbound(t, topo.client, "198.18.1.2:9090", "haproxy, second address and port")
	// Outbound through the same HAProxy: the app's connect goes to 15001, HAProxy (uid 1337, exempt) dials out.
	app := &podnet.Cred{UID: 2000, GID: 2000}
	if res, err := dial(t, topo.server, app, "198.18.0.1:8081", 64<<10); err != nil || !res.Captured() || res.Reached != "198.18.0.1:8081" || res.Echoed != 64<<10 {
		t.Fatalf("outbound through haproxy: %+v %v", res, err)
	}

	hp.stop()
	scExpectRefused(t, topo.client, "198.18.0.2:8080", "haproxy stopped")
	hp = scStartHAProxy(t, topo.server, bin, cfg)
	listening := time.Now()
	if err := scWithin(listening, time.Second, func() error { return scDialOK(t, topo.client, "198.18.0.2:7070") }); err != nil {
		t.Fatalf("haproxy restarted: not delivered within a second of listening: %v", err)
	}
	scExpectInbound(t, topo.client, "198.18.0.2:8080", "haproxy restarted")
	hp.stop()

	// Another binary as the sidecar: nettool's transparent proxy, which asks SO_ORIGINAL_DST on every inbound
	// connection; the answer must be the destination the client dialled.
	td := startIn(t, topo.server, scProxyCred, nettoolBin, "origdst", "0.0.0.0:15006", "127.0.0.6")
	waitListening(t, topo.server, 15006)
	for _, addr := range []string{"198.18.0.2:9090", "198.18.2.2:8080"} {
		if res, err := dial(t, topo.client, nil, addr, 256<<10); err != nil || !res.OK || res.Reached != addr || !strings.HasPrefix(res.Peer, "127.0.0.6:") {
			out, _ := exec.Command("sh", "-c", "bpftool map dump pinned "+pin+"/netns-*/inbound/steered; bpftool cgroup show "+topo.server.CgroupDir).CombinedOutput()
			t.Fatalf("nettool origdst as the sidecar: %s: %+v %v\n%s\n%+v\n%s", addr, res, err, td.stdout.String(), inbFor(t, inbStatusOf(t, pin, topo.server), topo.server), out)
		}
	}
	td.stop()
	var recs []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(td.stdout.String()), "\n") {
		var r map[string]string
		if json.Unmarshal([]byte(line), &r) == nil {
			recs = append(recs, r)
		}
	}
	if len(recs) != 2 {
		t.Fatalf("nettool origdst logged %d connections, want 2:\n%s", len(recs), td.stdout.String())
	}
	for _, r := range recs {
		if r["error"] != "" || r["origdst"] != r["local"] || !strings.HasPrefix(r["origdst"], "198.18.") {
			t.Errorf("SO_ORIGINAL_DST on an inbound connection: %v, want the dialled destination", r)
		}
	}
	scExpectRefused(t, topo.client, "198.18.0.2:8080", "every sidecar stopped")
	st := inbFor(t, inbStatusOf(t, pin, topo.server), topo.server)
	if st == nil || st.Stats.Registered < 3 || st.Stats.OrigDst < 2 || !st.SelfRegister {
		t.Errorf("status: %+v, want >= 3 self-registrations and >= 2 SO_ORIGINAL_DST answers", st)
	}

	// init again with the sidecar running (an update in place: links updated, listener kept), then detach: the
	// inbound cgroup programs go with the netns's capture.
	scStartHAProxy(t, topo.server, bin, cfg)
	scExpectInbound(t, topo.client, "198.18.0.2:8080", "haproxy running again")
	initEBPFIn(t, topo.server, pin)
	scExpectInbound(t, topo.client, "198.18.0.2:9090", "after init ran again")
	if n := inboundCgroupPrograms(t, topo.server.CgroupDir); n != 4 {
		t.Errorf("%d inbound programs on the pod cgroup after a second init, want 4 (updated in place)", n)
	}
	if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pin, "--cgroup", topo.server.CgroupDir, "--netns", topo.server.NetnsPath); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	if n := inboundCgroupPrograms(t, topo.server.CgroupDir); n != 0 {
		t.Errorf("%d inbound programs left on the pod cgroup after detach", n)
	}
}

// TestSidecarAppCannotStealInbound: an app (uid 2000) listening on 15006 before the sidecar never gets captured
// inbound traffic, neither from the kernel's registration nor from init's search for a listener.
func TestSidecarAppCannotStealInbound(t *testing.T) {
	requireRoot(t)
	bin, cfg := scHAProxy(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	app := &podnet.Cred{UID: 2000, GID: 2000}
	thief := startIn(t, topo.server, app, nettoolBin, "serve", "0.0.0.0:15006")
	waitListening(t, topo.server, 15006)
	initEBPFIn(t, topo.server, pin)
	scExpectRefused(t, topo.client, "198.18.0.2:8080", "an app listens on 15006 (before init)")
	thief.stop()
	thief = startIn(t, topo.server, app, nettoolBin, "serve", "0.0.0.0:15006")
	waitListening(t, topo.server, 15006)
	scExpectRefused(t, topo.client, "198.18.0.2:8080", "an app listens on 15006 (after init)")
	thief.stop()
	scStartHAProxy(t, topo.server, bin, cfg)
	scExpectInbound(t, topo.client, "198.18.0.2:8080", "the sidecar after the app left")
	if st := inbFor(t, inbStatusOf(t, pin, topo.server), topo.server); st == nil || st.Stats.RefusedOwner < 1 {
		t.Errorf("status: %+v, want the app's bind counted as refused", st)
	}
}

// TestSidecarHAProxyAgent: agent mode (meshcap agent + meshcap-cni), HAProxy as the enrolled pod's sidecar. The
// agent's resync is an hour, so every step below works without it: the kernel registers the sidecar itself. The
// pod's cgroup is named as the kubelet names it (pod<uid>) and the runtime passes K8S_POD_UID, so the inbound cgroup
// programs go on the pod's own cgroup, not on the shared kubepods root.
func TestSidecarHAProxyAgent(t *testing.T) {
	requireRoot(t)
	bin, cfg := scHAProxy(t)
	pin := ebPinRoot(t)
	kubepods := kubepodsCgroup(t)
	e := newCNIEnv(t)
	uid := "5eed" + randHex(4) + "-0000-4000-8000-000000000001"
	podA := podUnderNamed(t, kubepods, "a", "pod"+uid)
	client := newPod(t, "cli")
	startAgent(t, "--cgroup", kubepods, "--pin-dir", pin, "--state-dir", e.stateDir, "--resync", "1h")
	e.add(client, podArgs("default", "cli"))
	ipA := e.add(podA, podArgs("default", "a", "MESHCAP_ENROLL=true", "K8S_POD_UID="+uid))
	if a, root := inboundCgroupPrograms(t, podA.CgroupDir), inboundCgroupPrograms(t, kubepods); a != 4 || root != 0 {
		t.Errorf("inbound cgroup programs: %d on the pod's cgroup (want 4), %d on the kubepods root (want 0)", a, root)
	}
	startEcho(t, podA, "0.0.0.0:9090")
	addr := fmt.Sprintf("%s:9090", ipA)
	scExpectRefused(t, client, addr, "agent mode, no sidecar yet")

	hp := scStartHAProxy(t, podA, bin, cfg)
	if err := scWithin(time.Now(), time.Second, func() error { return scDialOK(t, client, addr) }); err != nil {
		t.Fatalf("agent mode: haproxy started after enrollment: %v", err)
	}
	scExpectInbound(t, client, addr, "agent mode, haproxy")
	hp.stop()
	scExpectRefused(t, client, addr, "agent mode, haproxy stopped")
	scStartHAProxy(t, podA, bin, cfg)
	if err := scWithin(time.Now(), time.Second, func() error { return scDialOK(t, client, addr) }); err != nil {
		t.Fatalf("agent mode: haproxy restarted: not delivered within a second: %v", err)
	}
}

// scRedsocksConfig: Debian's redsocks as the outbound sidecar on 127.0.0.1:15001, handing each captured
// connection (its original destination from SO_ORIGINAL_DST) to a SOCKS5 server on 127.0.0.1:1080.
const scRedsocksConfig = `base {
    log_debug = off;
    log_info = on;
    log = stderr;
    daemon = off;
    redirector = iptables;
}
redsocks {
    local_ip = 127.0.0.1;
    local_port = 15001;
    ip = 127.0.0.1;
    port = 1080;
    type = socks5;
}
`

// TestSidecarRedsocksOutbound: per-pod mode (istio-init's arguments), redsocks as the outbound sidecar, started
// after init as uid 1337. Captured connections reach exactly their original destination through it.
func TestSidecarRedsocksOutbound(t *testing.T) {
	requireRoot(t)
	bin := requireTool(t, "redsocks")
	pin := ebPinRoot(t)
	topo := newTopology(t)
	cfg := filepath.Join(worldDir(t), "redsocks.conf")
	if err := os.WriteFile(cfg, []byte(scRedsocksConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	initEBPFIn(t, topo.client, pin)
	startIn(t, topo.client, scProxyCred, nettoolBin, "socks", "127.0.0.1:1080")
	waitListening(t, topo.client, 1080)
	rs := startIn(t, topo.client, scProxyCred, bin, "-c", cfg)
	waitListening(t, topo.client, 15001)
	for _, d := range []string{"198.18.0.2:8080", "198.18.1.2:9090", "198.18.2.2:7070"} {
		res, err := dial(t, topo.client, user, d, 1<<20)
		if err != nil || !res.OK || !res.Captured() || res.Reached != d || res.Echoed != 1<<20 {
			t.Fatalf("dial %s through redsocks: %+v %v\nredsocks:\n%s", d, res, err, rs.stderr.String())
		}
	}
	rs.stop()
	if res, err := dial(t, topo.client, user, "198.18.0.2:8080", 10); err == nil || res.OK {
		t.Errorf("redsocks stopped: a captured connect must fail, got %+v", res)
	}
}
