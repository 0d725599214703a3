package test

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// istio-init's arguments, as the sidecar injector passes them.
var istioInitArgs = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}

// runInitIn runs `meshcap init` inside pod (its netns and cgroup) and returns its log (stderr).
func runInitIn(t *testing.T, pod *podnet.Pod, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(meshcapBin, append([]string{"init"}, args...)...)
	cmd.Env = append(cmd.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := pod.Start(cmd, nil); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	t.Logf("meshcap init %q:\n%s", args, out.String())
	return out.String(), err
}

func TestDeployInitAutoChoosesEBPF(t *testing.T) {
	requireRoot(t)
	pod := newPod(t, "init")
	pin := ebPinRoot(t)
	log, err := runInitIn(t, pod, nil, append([]string{"--mode", "auto", "--cgroup", pod.CgroupDir, "--pin-root", pin}, istioInitArgs...)...)
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	if !strings.Contains(log, `"mode": "ebpf"`) || !strings.Contains(log, "capture mode chosen") {
		t.Fatalf("log does not say mode ebpf")
	}
	st := ebStatus(t, pin)
	if len(st.Attachments) != 1 || st.Attachments[0].CgroupPath != pod.CgroupDir {
		t.Fatalf("status %+v: want one attachment at %s", st, pod.CgroupDir)
	}
	// No iptables rules in the pod.
	if out, _ := runIn(t, pod, nil, "iptables-save"); strings.Contains(out, "ISTIO_") {
		t.Fatalf("iptables rules in eBPF mode:\n%s", out)
	}
}

func TestDeployInitAutoFallsBackToIPTables(t *testing.T) {
	requireRoot(t)
	pod, peer := newPod(t, "initipt"), newPod(t, "peer")
	linkPods(t, pod, peer) // istio's rules need a pod IP
	pin := ebPinRoot(t)
	log, err := runInitIn(t, pod, []string{"MESHCAP_PROBE_DISABLE=connect4"},
		append([]string{"--mode", "auto", "--cgroup", pod.CgroupDir, "--pin-root", pin}, istioInitArgs...)...)
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	if !strings.Contains(log, `"mode": "iptables"`) || !strings.Contains(log, "attach:connect4 (disabled by MESHCAP_PROBE_DISABLE)") {
		t.Fatalf("log does not say mode iptables because of attach:connect4")
	}
	if st := ebStatus(t, pin); len(st.Attachments) != 0 {
		t.Fatalf("eBPF attached in iptables mode: %+v", st)
	}
	out, err := runIn(t, pod, nil, "iptables-save", "-t", "nat")
	if err != nil {
		out2, _ := runIn(t, pod, nil, "iptables-legacy-save", "-t", "nat")
		out += out2
	}
	for _, want := range []string{"-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"} {
		if !strings.Contains(out, want) {
			t.Errorf("iptables-save lacks %q:\n%s", want, out)
		}
	}
}

func TestDeployInitModeEBPFFailsWhenDisabled(t *testing.T) {
	requireRoot(t)
	pod := newPod(t, "initebpf")
	pin := ebPinRoot(t)
	log, err := runInitIn(t, pod, []string{"MESHCAP_PROBE_DISABLE=sk_assign"},
		append([]string{"--mode", "ebpf", "--cgroup", pod.CgroupDir, "--pin-root", pin}, istioInitArgs...)...)
	if err == nil || !strings.Contains(log, "helper:sk_lookup:sk_assign") {
		t.Fatalf("init --mode ebpf with sk_assign disabled: err=%v", err)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want code 1 (istio-init)", err)
	}
}
