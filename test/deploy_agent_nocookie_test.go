package test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/cni"
)

// TestDeployAgentCNINoNetnsCookie: where no process can read a netns cookie (no SO_NETNS_COOKIE and no reader:
// forced here with MESHCAP_PROBE_DISABLE for the test, the CNI plugin, the agent and the proxy), no pod can be keyed
// in agent mode, and that is said loudly: meshcap-cni sends the enrolled pod to istio's rules (saying why), the agent
// warns naming the missing check and enrolls nothing (it attaches: reading cookies is meshcap-cni's job, and a
// process of its own that cannot is no proof that meshcap-cni cannot), and the pod's traffic is still captured by its
// sidecar.
func TestDeployAgentCNINoNetnsCookie(t *testing.T) {
	t.Setenv(loader.ProbeDisableEnv, loader.CheckUserspaceNetnsCookie)
	f := newAgentCNIFixture(t)
	rec := f.e.record(f.podA.NetnsPath)
	if rec == nil || rec.Mode != cni.ModeIPTables {
		t.Fatalf("pod A record %+v: want mode %q (no netns cookie for userspace: no agent mode)", rec, cni.ModeIPTables)
	}
	if rules := istioRules(t, f.podA, "iptables"); !strings.Contains(rules, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
		t.Fatalf("pod A has no istio outbound redirect:\n%s", rules)
	}
	agent := startAgent(t, f.agentArgs...)
	if log := agent.log.String(); !strings.Contains(log, "reads no netns cookie") || !strings.Contains(log, loader.CheckUserspaceNetnsCookie) {
		t.Errorf("agent does not warn naming the missing check:\n%s", log)
	}
	pinDir, err := loader.PinDir(f.kubepods, f.pin)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := loader.EnrolledNetns(pinDir); err != nil || len(got) != 0 {
		t.Errorf("enrolled netns %v (%v): want none (no pod can be keyed)", got, err)
	}
	startEcho(t, f.srv, "0.0.0.0:8080")
	startProxy(t, f.podA, "--pin-dir", ebPinRoot(t))
	res, err := dial(t, f.podA, nil, netip.AddrPortFrom(f.srvIP, 8080).String(), 1000)
	if err != nil || !res.Captured() {
		t.Fatalf("pod A's dial: captured=%v (%+v), %v: want its sidecar to relay it", res.Captured(), res, err)
	}
}
