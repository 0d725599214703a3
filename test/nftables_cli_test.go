package test

// `meshcap iptables --native-nftables` through the real CLI in fresh network namespaces: the golden replays
// (CASES.md's "CLI check"), bad input, apply/re-run/cleanup and the separation from iptables mode.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/nftables/nfttest"
	"github.com/meshcap/meshcap/pkg/podnet"
)

const nftGoldenDir = "../testdata/istio-golden/nftables"

// nftRuleset returns `nft list ruleset` inside pod.
func nftRuleset(t *testing.T, pod *podnet.Pod) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+pod.NetnsPath, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

// runNftCLI runs `meshcap iptables --native-nftables ARGS` in pod with exactly env, in a private mount namespace
// where /etc/resolv.conf and /etc/group are the given files ("" = the host's), as a container would see them.
func runNftCLI(t *testing.T, pod *podnet.Pod, env []string, resolv, group string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	script := `set -e
[ -z "$MC_RESOLV" ] || mount --bind "$MC_RESOLV" /etc/resolv.conf
[ -z "$MC_GROUP" ] || mount --bind "$MC_GROUP" /etc/group
unset MC_RESOLV MC_GROUP
exec "$@"`
	argv := append([]string{"-m", "--propagation", "private", "sh", "-c", script, "sh", meshcapBin, "iptables", "--native-nftables"}, args...)
	cmd := exec.CommandContext(ctx, "unshare", argv...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "ENVOY_USER=mc-no-such-user", "MC_RESOLV=" + resolv, "MC_GROUP=" + group}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := pod.Start(cmd, nil); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return stdout.String(), fmt.Errorf("meshcap iptables --native-nftables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// nftCasePod is a fresh netns whose only non-loopback address is 10.1.2.3/32 or 2001:db8::3/128 on lo, as in
// CASES.md's CLI check.
func nftCasePod(t *testing.T, v6 bool) *podnet.Pod {
	t.Helper()
	pod := newPod(t, "nftc")
	addr := "10.1.2.3/32"
	if v6 {
		addr = "2001:db8::3/128"
	}
	if out, err := exec.Command("ip", "-n", pod.Name, "addr", "add", addr, "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("add %s: %v %s", addr, err, out)
	}
	return pod
}

// nftCaseFiles writes the case's resolv.conf and an /etc/group with its groups added; "" when not needed.
func nftCaseFiles(t *testing.T, c nfttest.Case) (resolv, group string) {
	t.Helper()
	dir := t.TempDir()
	if c.Resolv != nil {
		resolv = filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(resolv, []byte(*c.Resolv), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.Groups) > 0 {
		base, err := os.ReadFile("/etc/group")
		if err != nil {
			t.Fatal(err)
		}
		for i, g := range c.Groups {
			base = fmt.Appendf(base, "%s:x:%d:\n", g, 47000+i)
		}
		group = filepath.Join(dir, "group")
		if err := os.WriteFile(group, base, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return resolv, group
}

// TestNftablesCLIGoldens replays every golden through `meshcap iptables --native-nftables -n` in a fresh netns
// and compares stdout byte for byte; -n must leave the ruleset empty.
func TestNftablesCLIGoldens(t *testing.T) {
	requireRoot(t)
	cases, err := nfttest.Load(nftGoldenDir)
	if err != nil {
		t.Fatal(err)
	}
	replayed := 0
	for _, c := range cases {
		if !c.ThroughCLI() {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(nftGoldenDir, c.Golden))
			if err != nil {
				t.Fatal(err)
			}
			pod := nftCasePod(t, c.V6)
			resolv, group := nftCaseFiles(t, c)
			var env []string
			for k, v := range c.Env {
				env = append(env, k+"="+v)
			}
			out, err := runNftCLI(t, pod, env, resolv, group, append([]string{"-n"}, c.Args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if out != string(want) {
				t.Fatalf("stdout differs from %s:\n%s", c.Golden, out)
			}
			if rs := nftRuleset(t, pod); rs != "" {
				t.Fatalf("-n applied rules:\n%s", rs)
			}
		})
		replayed++
	}
	if replayed != 28 {
		t.Fatalf("%d CLI replays, want 28 (27 goldens + dns-uid-gid-via-cli)", replayed)
	}
}

// TestNftablesCLIBadInputAppliesNothing: values that istio leaves to nft (or that nft accepts with another meaning)
// are refused before nft runs: non-zero exit, the value named, the ruleset still empty.
func TestNftablesCLIBadInputAppliesNothing(t *testing.T) {
	requireRoot(t)
	pod := nftCasePod(t, false)
	for _, tc := range []struct {
		args []string
		env  []string
		bad  string
	}{
		{[]string{"-b", "80x"}, nil, "80x"},
		{[]string{"-b", "80-90"}, nil, "80-90"},
		{[]string{"-b", "http"}, nil, "http"},
		{[]string{"-o", "3306x"}, nil, "3306x"},
		{[]string{"-p", "99999"}, nil, "99999"},
		{[]string{"-i", "*", "-x", "*"}, nil, "*"},
		{[]string{"-i", "10.0.0.0/33"}, nil, "10.0.0.0/33"},
		{[]string{"-i", "10.0.0.1"}, nil, "10.0.0.1"},
		{[]string{"-u", "nosuchuser"}, nil, "nosuchuser"},
		{[]string{"-u", "root"}, nil, "root"},
		{[]string{"-c", "eth+"}, nil, "eth+"},
		{[]string{"-i", "*"}, []string{"ISTIO_OUTBOUND_OWNER_GROUPS=mc-no-such-group"}, "mc-no-such-group"},
		{[]string{"-i", "*"}, []string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=888,mc-no-such-group"}, "mc-no-such-group"},
	} {
		args := append(append([]string{}, istioInitArgs...), tc.args...)
		_, err := runNftCLI(t, pod, tc.env, "", "", args...)
		if err == nil {
			t.Fatalf("%v %v: accepted", tc.args, tc.env)
		}
		if !strings.Contains(err.Error(), `"`+tc.bad+`"`) {
			t.Errorf("%v: error does not name %q: %v", tc.args, tc.bad, err)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Errorf("%v: want a non-zero exit, got %v", tc.args, err)
		}
		if rs := nftRuleset(t, pod); rs != "" {
			t.Fatalf("%v: rules applied:\n%s", tc.args, rs)
		}
	}
}

// TestNftablesCLIApplyStatusCleanup: apply, idempotent re-run, `meshcap status` says nftables, iptables-mode cleanup
// leaves the nft tables alone (and nft cleanup leaves iptables rules alone), nft cleanup leaves no istio table.
func TestNftablesCLIApplyStatusCleanup(t *testing.T) {
	requireRoot(t)
	pod := iptablesPod(t)
	if _, err := runNftCLI(t, pod, nil, "", "", istioInitArgs...); err != nil {
		t.Fatal(err)
	}
	first := nftRuleset(t, pod)
	if !strings.Contains(first, "table inet istio-proxy-nat") || strings.Contains(first, "istio-proxy-mangle") {
		t.Fatalf("after apply:\n%s", first)
	}
	if _, err := runNftCLI(t, pod, nil, "", "", istioInitArgs...); err != nil {
		t.Fatalf("re-run: %v", err)
	}
	if again := nftRuleset(t, pod); again != first {
		t.Fatalf("re-run changed the ruleset:\n%s", again)
	}
	st, err := runIn(t, pod, nil, meshcapBin, "status", "--pin-dir", ebPinRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st, "mode: nftables\n") || !strings.Contains(st, "inet istio-proxy-nat (prerouting, output, istio-inbound, istio-redirect, istio-in-redirect, istio-output)") {
		t.Fatalf("status:\n%s", st)
	}
	// iptables-mode cleanup does not touch the nft tables.
	if _, err := runIn(t, pod, nil, meshcapBin, "iptables", "--cleanup-only"); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t, pod); !strings.Contains(got, "table inet istio-proxy-nat") {
		t.Fatalf("iptables --cleanup-only removed nft tables:\n%s", got)
	}
	// Nor does nft cleanup touch iptables-mode rules.
	if _, err := runIn(t, pod, nil, meshcapBin, append([]string{"iptables", "--force-iptables-binary", "legacy"}, iptablesInjectedArgs...)...); err != nil {
		t.Fatal(err)
	}
	if _, err := runNftCLI(t, pod, nil, "", "", "--cleanup-only"); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t, pod); strings.Contains(got, "istio-proxy") {
		t.Fatalf("istio tables after --native-nftables --cleanup-only:\n%s", got)
	}
	if got := iptablesSaved(t, pod, "legacy"); !strings.Contains(got, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
		t.Fatalf("nft cleanup removed iptables rules:\n%s", got)
	}
	if _, err := runIn(t, pod, nil, meshcapBin, "iptables", "--cleanup-only", "--force-iptables-binary", "legacy"); err != nil {
		t.Fatal(err)
	}
}

// TestNftablesCLITProxyRoutes: TPROXY with inbound ports adds the fwmark `ip rule` once, however often it runs,
// and --cleanup-only adds none (istio's cleanup re-adds it).
func TestNftablesCLITProxyRoutes(t *testing.T) {
	requireRoot(t)
	pod := nftCasePod(t, false)
	fwmarkRules := func() int {
		out, err := exec.Command("ip", "-n", pod.Name, "rule", "show", "fwmark", "1337", "lookup", "133").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(out), "fwmark 0x539 lookup 133")
	}
	for i := 0; i < 2; i++ {
		if _, err := runNftCLI(t, pod, nil, "", "", "-m", "TPROXY", "-b", "*", "-i", "*"); err != nil {
			t.Fatal(err)
		}
		if n := fwmarkRules(); n != 1 {
			t.Fatalf("run %d: %d fwmark rules, want 1", i+1, n)
		}
	}
	if _, err := runNftCLI(t, pod, nil, "", "", "--cleanup-only", "-m", "TPROXY", "-b", "*"); err != nil {
		t.Fatal(err)
	}
	if n := fwmarkRules(); n != 1 {
		t.Fatalf("after cleanup: %d fwmark rules, want the 1 left from the apply", n)
	}
	if rs := nftRuleset(t, pod); rs != "" {
		t.Fatalf("after cleanup:\n%s", rs)
	}
}

// TestNftablesCLIWithoutNft: without an nft binary, -n still prints the transaction (it needs none), and an apply
// fails with exit 1 and says that nft is missing.
func TestNftablesCLIWithoutNft(t *testing.T) {
	requireRoot(t)
	if _, err := os.Stat("/usr/bin/nft"); err == nil {
		t.Skip("nft is in /usr/bin: cannot hide it with PATH=/usr/bin")
	}
	pod := nftCasePod(t, false)
	noNft := []string{"PATH=/usr/bin"} // sh and mount, not /usr/sbin/nft
	want, err := os.ReadFile(filepath.Join(nftGoldenDir, "inbound-ports-wildcard.golden"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runNftCLI(t, pod, noNft, "", "", "-n", "-b", "*"); err != nil || out != string(want) {
		t.Fatalf("-n without nft: %v\n%s", err, out)
	}
	_, err = runNftCLI(t, pod, noNft, "", "", "-b", "*")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(err.Error(), "no usable nft binary") {
		t.Fatalf("apply without nft: %v", err)
	}
}
