package test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/cni"
	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/pkg/podnet"
)

// kernelGivesNetnsCookie: SO_NETNS_COOKIE (Linux 5.14+), which agent mode needs to key pods as BPF sees them.
func kernelGivesNetnsCookie(t *testing.T) bool {
	t.Helper()
	_, err := hostfs.OwnNetnsCookie()
	if err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
		t.Fatal(err)
	}
	return err == nil
}

// agentCNIWithoutNetnsCookie is TestDeployAgentCNI on a kernel without SO_NETNS_COOKIE (Debian's 5.10), where
// agent mode is unavailable: meshcap-cni must have sent the enrolled pod to istio's rules (saying why), the agent
// must say eBPF is unavailable and attach nothing, and the pod's traffic must still be captured by its sidecar.
func agentCNIWithoutNetnsCookie(t *testing.T, e *cniEnv, kubepods string, agentArgs []string, podA, srv *podnet.Pod, srvIP netip.Addr) {
	t.Helper()
	rec := e.record(podA.NetnsPath)
	if rec == nil || rec.Mode != cni.ModeIPTables {
		t.Fatalf("pod A record %+v: want mode %q (no netns cookie for userspace: no agent mode)", rec, cni.ModeIPTables)
	}
	if rules := istioRules(t, podA, "iptables"); !strings.Contains(rules, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
		t.Fatalf("pod A has no istio outbound redirect:\n%s", rules)
	}
	agent := startAgentUntil(t, "eBPF unavailable on this node", agentArgs...)
	if !strings.Contains(agent.log.String(), "so_netns_cookie") {
		t.Errorf("agent does not name the missing feature:\n%s", agent.log.String())
	}
	if got := cgroupPrograms(t, kubepods); got != 0 {
		t.Errorf("%d programs attached at the kubepods root by an agent that cannot key pods", got)
	}
	startEcho(t, srv, "0.0.0.0:8080")
	startProxy(t, podA, "--pin-dir", ebPinRoot(t))
	res, err := dial(t, podA, nil, netip.AddrPortFrom(srvIP, 8080).String(), 1000)
	if err != nil || !res.Captured() {
		t.Fatalf("pod A's dial: captured=%v (%+v), %v: want its sidecar to relay it", res.Captured(), res, err)
	}
}
