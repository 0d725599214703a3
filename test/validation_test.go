package test

// `meshcap init --run-validation --skip-rule-apply`, as istio-cni's istio-validation init container runs it in
// every pod (as the proxy uid): exit 0 where capture is in place (eBPF or iptables), 126 where it is not, and
// nothing left behind.

import (
	"errors"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// valRun runs the validation (`meshcap init`, or with sub "iptables" the istio-iptables drop-in) in pod as cred
// and returns its exit code.
func valRun(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, timeout string, sub ...string) int {
	t.Helper()
	cmd := "init"
	if len(sub) > 0 {
		cmd = sub[0]
	}
	args := append([]string{cmd, "--run-validation", "--skip-rule-apply", "--probe-timeout", timeout}, istioInitArgs...)
	_, err := runIn(t, pod, cred, meshcapBin, args...)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Logf("validation in %s: %v", pod.Name, err)
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("validation in %s: %v", pod.Name, err)
	}
	return 0
}

// valNothingLeft: the validation's listeners are gone.
func valNothingLeft(t *testing.T, pod *podnet.Pod) {
	t.Helper()
	for _, port := range []int{15001, 15006} {
		if on, err := pod.Listening(port); err != nil || on {
			t.Errorf("after validation something listens on %d in %s (%v)", port, pod.Name, err)
		}
	}
}

func TestRunValidation(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	ipt, peer := newPod(t, "valipt"), newPod(t, "valpeer")
	if err := podnet.Link(ipt, peer, netip.MustParsePrefix("198.18.9.1/24"), netip.MustParsePrefix("198.18.9.2/24")); err != nil {
		t.Fatal(err) // istio's rules need a pod IP
	}

	t.Run("uncaptured pod fails with 126", func(t *testing.T) {
		if code := valRun(t, topo.server, scProxyCred, "1s"); code != 126 {
			t.Fatalf("exit %d, want 126", code)
		}
		valNothingLeft(t, topo.server)
	})
	t.Run("ebpf", func(t *testing.T) {
		initEBPFIn(t, topo.server, pin)
		if code := valRun(t, topo.server, scProxyCred, "5s"); code != 0 { // the proxy uid, as istio-validation runs
			t.Fatalf("validation as the proxy uid in an eBPF-captured pod: exit %d, want 0", code)
		}
		// As root, as under istio's rules: its probes to 127.0.0.6 and the pod's own IP go over lo, which rule 11b
		// returns; only the proxy uid's are sent to the inbound port (rule 11a).
		if code := valRun(t, topo.server, nil, "1s"); code != 126 {
			t.Fatalf("validation as root in an eBPF-captured pod: exit %d, want 126 (istio's lo rules return root's probes)", code)
		}
		valNothingLeft(t, topo.server)
		if st := inbFor(t, inbStatusOf(t, pin, topo.server), topo.server); st == nil || st.Listener {
			t.Errorf("inbound status after validation: %+v, want no listener registered", st)
		}
		// Capture still works for the real sidecar afterwards.
		bin, cfg := scHAProxy(t)
		scStartHAProxy(t, topo.server, bin, cfg)
		scExpectInbound(t, topo.client, "198.18.0.2:8080", "sidecar after validation")
	})
	t.Run("iptables", func(t *testing.T) {
		if _, err := runInitIn(t, ipt, nil, append([]string{"--mode", "iptables"}, istioInitArgs...)...); err != nil {
			t.Fatalf("init: %v", err)
		}
		if code := valRun(t, ipt, scProxyCred, "5s"); code != 0 {
			t.Fatalf("validation in an iptables-captured pod: exit %d, want 0", code)
		}
		if code := valRun(t, ipt, scProxyCred, "5s", "iptables"); code != 0 {
			t.Fatalf("meshcap iptables --run-validation in an iptables-captured pod: exit %d, want 0", code)
		}
		valNothingLeft(t, ipt)
	})
}
