package test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/cni"
)

// TestDeployAgentCNINoNetnsCookie: where no process can read a netns cookie (no SO_NETNS_COOKIE and no reader:
// forced here with MESHCAP_PROBE_DISABLE for the test, the CNI plugin, the agent and the proxy), agent mode is
// unavailable and says so: meshcap-cni sends the enrolled pod to istio's rules (saying why), the agent says eBPF is
// unavailable, naming the missing check, and attaches nothing, and the pod's traffic is still captured by its sidecar.
func TestDeployAgentCNINoNetnsCookie(t *testing.T) {
	t.Setenv(loader.ProbeDisableEnv, "userspace:netns_cookie")
	f := newAgentCNIFixture(t)
	rec := f.e.record(f.podA.NetnsPath)
	if rec == nil || rec.Mode != cni.ModeIPTables {
		t.Fatalf("pod A record %+v: want mode %q (no netns cookie for userspace: no agent mode)", rec, cni.ModeIPTables)
	}
	if rules := istioRules(t, f.podA, "iptables"); !strings.Contains(rules, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
		t.Fatalf("pod A has no istio outbound redirect:\n%s", rules)
	}
	agent := startAgentUntil(t, "eBPF unavailable on this node", f.agentArgs...)
	if !strings.Contains(agent.log.String(), "userspace:netns_cookie") {
		t.Errorf("agent does not name the missing feature:\n%s", agent.log.String())
	}
	if got := cgroupPrograms(t, f.kubepods); got != 0 {
		t.Errorf("%d programs attached at the kubepods root by an agent that cannot key pods", got)
	}
	startEcho(t, f.srv, "0.0.0.0:8080")
	startProxy(t, f.podA, "--pin-dir", ebPinRoot(t))
	res, err := dial(t, f.podA, nil, netip.AddrPortFrom(f.srvIP, 8080).String(), 1000)
	if err != nil || !res.Captured() {
		t.Fatalf("pod A's dial: captured=%v (%+v), %v: want its sidecar to relay it", res.Captured(), res, err)
	}
}
