package test

import (
	"syscall"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// TestProxyDrainKeepsAccepting: `meshcap proxy --drain-timeout 2s` behind eBPF capture. After SIGTERM an app's new
// captured connection is still relayed (Envoy's drain period); after the period new ones are refused, and the
// proxy exits 0 once its connections are done.
func TestProxyDrainKeepsAccepting(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	if out, err := runMeshcap(t, "ebpf", "attach", "--pin-dir", pin, "--cgroup", topo.client.CgroupDir, "-i", "*"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	px := startProxy(t, topo.client, "--pin-dir", pin, "--drain-timeout", "2s")
	app := &podnet.Cred{UID: 2000, GID: 2000}
	if err := px.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	time.Sleep(200 * time.Millisecond)
	res, err := dial(t, topo.client, app, "198.18.0.2:8080", 64<<10)
	if err != nil || !res.Captured() || res.Reached != "198.18.0.2:8080" || res.Echoed != 64<<10 {
		t.Fatalf("connection opened %s after SIGTERM (drain period 2s): want relayed, got %+v %v", time.Since(sent), res, err)
	}
	select {
	case <-px.done:
		t.Fatalf("proxy exited %s after SIGTERM, before the end of its drain period: %v", time.Since(sent), px.err)
	default:
	}
	select {
	case <-px.done:
		if px.err != nil {
			t.Fatalf("proxy exit: %v\n%s", px.err, px.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("proxy did not exit after its drain")
	}
	if d := time.Since(sent); d < 2*time.Second {
		t.Errorf("proxy exited %s after SIGTERM, before its 2s drain period", d)
	}
	// Fail closed: with the proxy gone a captured connect is refused, never sent direct.
	if res, err := dial(t, topo.client, app, "198.18.0.2:8080", 10); err == nil || res.OK {
		t.Errorf("after the drain a captured connect must fail: %+v", res)
	}
}
