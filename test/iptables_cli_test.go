package test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// istio-init's injected default arguments.
var iptablesInjectedArgs = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
	"-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"}

// iptablesPod is a pod whose only non-loopback address is IPv4 (198.18.0.2), as CASES.md's "v4" host.
func iptablesPod(t *testing.T) *podnet.Pod {
	t.Helper()
	peer, pod := newPod(t, "iptp"), newPod(t, "ipt")
	linkPods(t, peer, pod)
	return pod
}

// iptablesSaved returns the ISTIO lines of iptables-<backend>-save in pod.
func iptablesSaved(t *testing.T, pod *podnet.Pod, backend string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+pod.NetnsPath, "iptables-"+backend+"-save").Output()
	if err != nil {
		t.Fatalf("iptables-%s-save: %v", backend, err)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "ISTIO") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

func TestIptablesCLIDryRunMatchesGolden(t *testing.T) {
	requireRoot(t)
	pod := iptablesPod(t)
	golden, err := os.ReadFile("../testdata/istio-golden/cli-derived/injected-default-v4.txt")
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, l := range strings.SplitAfter(string(golden), "\n") {
		if l != "" && l != "iptables-save\n" && l != "ip6tables-save\n" {
			want.WriteString(l)
		}
	}
	out, err := runIn(t, pod, nil, meshcapBin, append([]string{"iptables", "-n"}, iptablesInjectedArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	if out != want.String() {
		t.Fatalf("dry-run output:\n%s\nwant:\n%s", out, want.String())
	}
}

func TestIptablesCLIBadInputAppliesNothing(t *testing.T) {
	requireRoot(t)
	pod := iptablesPod(t)
	for _, tc := range []struct {
		args []string
		bad  string
	}{
		{[]string{"-b", "80x"}, "80x"},
		{[]string{"-b", "*", "-d", "15090,99999"}, "99999"},
		{[]string{"-i", "*", "-x", "*"}, "*"},
		{[]string{"-i", "10.0.0.0/33"}, "10.0.0.0/33"},
		{[]string{"-i", "10.1.2.3"}, "10.1.2.3"},
		{[]string{"-u", "istio-proxy"}, "istio-proxy"},
		{[]string{"-i", "*", "--force-iptables-binary", "iptables"}, "iptables"},
	} {
		args := append([]string{"iptables"}, append(append([]string{}, iptablesInjectedArgs...), tc.args...)...)
		_, err := runIn(t, pod, nil, meshcapBin, args...)
		if err == nil {
			t.Fatalf("%v: accepted", tc.args)
		}
		if !strings.Contains(err.Error(), `"`+tc.bad+`"`) {
			t.Errorf("%v: error does not name %q: %v", tc.args, tc.bad, err)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Errorf("%v: want a non-zero exit, got %v", tc.args, err)
		}
		for _, backend := range []string{"legacy", "nft"} {
			if got := iptablesSaved(t, pod, backend); got != "" {
				t.Fatalf("%v: rules applied (%s):\n%s", tc.args, backend, got)
			}
		}
	}
}

func TestIptablesCLIApplyRerunCleanup(t *testing.T) {
	requireRoot(t)
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			pod := iptablesPod(t)
			args := append([]string{"iptables", "--force-iptables-binary", backend}, iptablesInjectedArgs...)
			if _, err := runIn(t, pod, nil, meshcapBin, args...); err != nil {
				t.Fatal(err)
			}
			first := iptablesSaved(t, pod, backend)
			if n := strings.Count(first, "\n") + 1; n != 22 || !strings.Contains(first, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
				t.Fatalf("%d ISTIO lines after apply:\n%s", n, first)
			}
			if _, err := runIn(t, pod, nil, meshcapBin, args...); err != nil {
				t.Fatalf("idempotent re-run: %v", err)
			}
			if again := iptablesSaved(t, pod, backend); again != first {
				t.Fatalf("re-run changed the rules:\n%s", again)
			}
			if _, err := runIn(t, pod, nil, meshcapBin, "iptables", "--cleanup-only"); err != nil {
				t.Fatal(err)
			}
			if got := iptablesSaved(t, pod, backend); got != "" {
				t.Fatalf("after --cleanup-only:\n%s", got)
			}
		})
	}
}
