package test

// Third-party proxy check: an unmodified, distribution-packaged HAProxy replaces meshcap's proxy in a pod with eBPF
// capture attached. In `mode tcp` with a server address of 0.0.0.0 and no port, HAProxy forwards each connection to
// "the address the client connected to", which on Linux it reads with getsockopt(SOL_IP, SO_ORIGINAL_DST)
// (src/sock_inet.c: sock_inet_get_dst, built with USE_TPROXY/USE_NETFILTER as Debian's package is). In eBPF mode
// that getsockopt is answered by meshcap's cgroup/getsockopt program, so this proves the answer is what an
// iptables-era proxy expects, without any meshcap code in the relay.

import (
	"bufio"
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

// tpHAProxyConfig: one TCP frontend on the capture port, one backend whose only server is "the original
// destination". Each relayed connection is logged as one JSON line on stdout (written when it closes):
// fe = the address HAProxy believes the client connected to (SO_ORIGINAL_DST), srv = where it connected upstream.
const tpHAProxyConfig = `global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    log stdout format raw local0
    log-format "{\"client\":\"%%ci:%%cp\",\"fe\":\"%%fi:%%fp\",\"srv\":\"%%si:%%sp\",\"term\":\"%%ts\",\"bytes\":%%B}"
frontend captured
    bind %s
    default_backend original_dst
backend original_dst
    server orig 0.0.0.0
`

// tpLogRecord is one line of tpHAProxyConfig's log-format.
type tpLogRecord struct {
	Client, FE, Srv, Term string
	Bytes                 int64
}

// tpHAProxyLog parses the JSON lines HAProxy has written so far (other lines, e.g. startup notices, are skipped).
func tpHAProxyLog(out string) []tpLogRecord {
	var recs []tpLogRecord
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r tpLogRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.FE != "" {
			recs = append(recs, r)
		}
	}
	return recs
}

// TestThirdPartyHAProxy: `meshcap ebpf attach -i '*'` on the client pod, Debian's haproxy running as uid/gid 1337
// in the pod on 127.0.0.1:15001 in place of meshcap's proxy. Captured connections to two server addresses and
// two ports reach exactly their original destination through HAProxy (data intact); uid 1337 and processes outside
// the cgroup go direct; with HAProxy stopped a captured connect fails; after detach the client goes direct.
func TestThirdPartyHAProxy(t *testing.T) {
	requireRoot(t)
	haproxy := requireTool(t, "haproxy")
	pin := ebPinRoot(t)
	topo := newTopology(t)

	const listen = "127.0.0.1:15001"
	cfg := filepath.Join(worldDir(t), "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(tpHAProxyConfig, listen)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c -f %s: %v\n%s", cfg, err, out)
	}

	if out, err := runMeshcap(t, "ebpf", "attach", "--pin-dir", pin, "--cgroup", topo.client.CgroupDir, "-i", "*"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	proxyCred := &podnet.Cred{UID: 1337, GID: 1337}
	hp := startIn(t, topo.client, proxyCred, haproxy, "-db", "-f", cfg)
	waitListening(t, topo.client, 15001)

	app := &podnet.Cred{UID: 2000, GID: 2000}
	dests := []string{"198.18.0.2:8080", "198.18.0.2:9090", "198.18.1.2:8080", "198.18.1.2:9090"}
	const payload = 1 << 20
	for _, d := range dests {
		res, err := dial(t, topo.client, app, d, payload)
		if err != nil || !res.OK {
			t.Fatalf("dial %s through haproxy: %+v %v\nhaproxy stderr:\n%s", d, res, err, hp.stderr.String())
		}
		if res.Reached != d {
			t.Errorf("dial %s reached %s: haproxy relayed to the wrong destination", d, res.Reached)
		}
		if !res.Captured() {
			t.Errorf("dial %s was not relayed (client %s, server saw %s)", d, res.Local, res.Peer)
		}
		if res.Echoed != payload {
			t.Errorf("dial %s: echoed %d of %d bytes", d, res.Echoed, payload)
		}
		if !strings.HasPrefix(res.Peer, "198.18.0.1:") {
			t.Errorf("dial %s: server saw peer %s, want the client pod's address (haproxy's upstream socket)", d, res.Peer)
		}
	}

	// HAProxy's own log: it accepted each connection believing the client had connected to the original
	// destination (its SO_ORIGINAL_DST answer), and connected upstream there. Lines are written at close.
	var recs []tpLogRecord
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if recs = tpHAProxyLog(hp.stdout.String()); len(recs) >= len(dests) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("haproxy log: %+v", recs)
	seen := map[string]bool{}
	for _, r := range recs {
		if r.FE != r.Srv {
			t.Errorf("haproxy: accepted on %s (SO_ORIGINAL_DST) but connected to %s", r.FE, r.Srv)
		}
		if !strings.HasPrefix(r.Client, "127.0.0.1:") {
			t.Errorf("haproxy: client %s, want a redirected connection from 127.0.0.1", r.Client)
		}
		seen[r.FE] = true
	}
	for _, d := range dests {
		if !seen[d] {
			t.Errorf("haproxy log has no connection to %s; log:\n%s", d, hp.stdout.String())
		}
	}

	// The proxy's uid is exempt: HAProxy's uid dials direct, as would any process running as 1337.
	if res, err := dial(t, topo.client, &podnet.Cred{UID: 1337, GID: 2000}, "198.18.1.2:9090", 1000); err != nil || !res.OK || res.Captured() || res.Reached != "198.18.1.2:9090" {
		t.Errorf("uid 1337 must go direct: %+v %v", res, err)
	}
	// A process in the pod's netns but outside its cgroup is not captured.
	out, err := exec.Command("nsenter", "--net="+topo.client.NetnsPath, nettoolBin, "dial", "198.18.0.2:8080", "-send", "100", "-timeout", "10s").Output()
	var outside DialResult
	if jerr := json.Unmarshal(out, &outside); jerr != nil || !outside.OK || outside.Captured() {
		t.Errorf("a process outside the cgroup must go direct: %+v %v %v", outside, err, jerr)
	}

	// HAProxy stopped: a captured connect goes to 127.0.0.1:15001 and is refused; it never bypasses.
	hp.stop()
	for _, d := range []string{"198.18.0.2:8080", "198.18.1.2:9090"} {
		if res, err := dial(t, topo.client, app, d, 10); err == nil || res.OK {
			t.Errorf("dial %s with haproxy stopped must fail: %+v", d, res)
		} else if !strings.Contains(res.Error, "refused") {
			t.Errorf("dial %s with haproxy stopped: %q, want connection refused", d, res.Error)
		}
	}

	if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pin, "--cgroup", topo.client.CgroupDir); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	if res, err := dial(t, topo.client, app, "198.18.0.2:9090", 10); err != nil || !res.OK || res.Captured() || res.Reached != "198.18.0.2:9090" {
		t.Errorf("after detach the client must go direct: %+v %v", res, err)
	}
}

// requireTool returns the path of a distribution-packaged tool (its package has the same name), looked up in PATH
// and /usr/sbin (Debian's path, in case PATH lacks sbin). Missing, the test is skipped, or fails under CI (.ci/run
// must install it: these checks must run there).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/" + name)
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed: .ci/run must apt-get install %s", name, name)
		}
		t.Skipf("%s is not installed (apt-get install %s)", name, name)
	}
	return bin
}
