package nftables

// Real nft in throwaway network namespaces. Root only.

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/nftables/nfttest"
	"github.com/meshcap/meshcap/pkg/podnet"
	"github.com/meshcap/meshcap/pkg/podnet/podtest"
)

const rootNeed = "creates network namespaces and runs nft in them"

// newPod makes a throwaway netns (+ cgroup) named mc-nft-<random>-<role>.
func newPod(t *testing.T, role string) *podnet.Pod { return podtest.NewPod(t, "mc-nft", role) }

var countersRE = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// ruleset returns `nft list ruleset` in pod with the counters zeroed.
func ruleset(t *testing.T, pod *podnet.Pod) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+pod.NetnsPath, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return countersRE.ReplaceAllString(string(out), "counter packets 0 bytes 0")
}

func mustApply(t *testing.T, pod *podnet.Pod, rs *Ruleset, o PlanOptions) {
	t.Helper()
	if err := Apply(context.Background(), Plan(rs, o), pod.NetnsPath); err != nil {
		t.Fatal(err)
	}
}

func build(t *testing.T, args ...string) *Ruleset {
	t.Helper()
	rs, err := Build(parseArgs(t, args, nil), nfttest.Case{}.Facts())
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// istio-init's injected default arguments.
var injectedArgs = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
	"-b", "*", "-d", "15090,15021,15020"}

// What nft 1.0.6 lists for the injected defaults (nft's own normal form; counters zeroed).
const injectedRuleset = `table inet istio-proxy-nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		meta l4proto tcp counter packets 0 bytes 0 jump istio-inbound
	}

	chain output {
		type nat hook output priority -100; policy accept;
		counter packets 0 bytes 0 jump istio-output
	}

	chain istio-inbound {
		tcp dport 15008 counter packets 0 bytes 0 return
		tcp dport 15090 counter packets 0 bytes 0 return
		tcp dport 15021 counter packets 0 bytes 0 return
		tcp dport 15020 counter packets 0 bytes 0 return
		meta l4proto tcp counter packets 0 bytes 0 jump istio-in-redirect
	}

	chain istio-redirect {
		meta l4proto tcp counter packets 0 bytes 0 redirect to :15001
	}

	chain istio-in-redirect {
		meta l4proto tcp counter packets 0 bytes 0 redirect to :15006
	}

	chain istio-output {
		oifname "lo" ip saddr 127.0.0.6 counter packets 0 bytes 0 return
		oifname "lo" ip daddr != 127.0.0.1 tcp dport != 15008 meta skuid 1337 counter packets 0 bytes 0 jump istio-in-redirect
		oifname "lo" meta skuid != 1337 counter packets 0 bytes 0 return
		meta skuid 1337 counter packets 0 bytes 0 return
		oifname "lo" ip daddr != 127.0.0.1 tcp dport != 15008 meta skgid 1337 counter packets 0 bytes 0 jump istio-in-redirect
		oifname "lo" meta skgid != 1337 counter packets 0 bytes 0 return
		meta skgid 1337 counter packets 0 bytes 0 return
		ip daddr 127.0.0.1 counter packets 0 bytes 0 return
		counter packets 0 bytes 0 jump istio-redirect
	}
}
`

// TestRealApplyRerunCleanup: exact ruleset after apply, identical after a re-run, nothing after cleanup.
func TestRealApplyRerunCleanup(t *testing.T) {
	podtest.RequireRoot(t, rootNeed)
	pod := newPod(t, "apply")
	rs := build(t, injectedArgs...)
	mustApply(t, pod, rs, PlanOptions{})
	if got := ruleset(t, pod); got != injectedRuleset {
		t.Fatalf("nft list ruleset:\n%s\nwant:\n%s", got, injectedRuleset)
	}
	mustApply(t, pod, rs, PlanOptions{})
	if got := ruleset(t, pod); got != injectedRuleset {
		t.Fatalf("re-run changed the ruleset:\n%s", got)
	}
	tables, err := List(context.Background(), pod.NetnsPath)
	if err != nil || len(tables) != 1 || tables[0].Table != TableNat || len(tables[0].Chains) != 6 {
		t.Fatalf("List: %+v, %v", tables, err)
	}
	mustApply(t, pod, nil, PlanOptions{CleanupOnly: true})
	if got := ruleset(t, pod); got != "" {
		t.Fatalf("after cleanup:\n%s", got)
	}
	// Cleanup of a clean netns succeeds and still leaves nothing.
	mustApply(t, pod, nil, PlanOptions{CleanupOnly: true})
	if got := ruleset(t, pod); got != "" {
		t.Fatalf("after a second cleanup:\n%s", got)
	}
}

// TestRealReconcile: a TPROXY + drop-invalid run leaves mangle (and DNS leaves raw) behind; a later plain run keeps
// them (istio's behaviour, byte-exact default), with --reconcile it removes them.
func TestRealReconcile(t *testing.T) {
	podtest.RequireRoot(t, rootNeed)
	pod := newPod(t, "reconcile")
	old := build(t, "-m", "TPROXY", "-b", "*", "-i", "*", "--drop-invalid", "--capture-all-dns", "--redirect-dns")
	plain := build(t, injectedArgs...)
	tableNames := func() string {
		tables, err := List(context.Background(), pod.NetnsPath)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tc := range tables {
			names = append(names, tc.Table)
		}
		return strings.Join(names, ",")
	}
	mustApply(t, pod, old, PlanOptions{})
	if got := tableNames(); got != "istio-proxy-nat,istio-proxy-mangle,istio-proxy-raw" {
		t.Fatalf("tables after TPROXY+DNS run: %s", got)
	}
	mustApply(t, pod, plain, PlanOptions{})
	if got := tableNames(); got != "istio-proxy-nat,istio-proxy-mangle,istio-proxy-raw" {
		t.Fatalf("without --reconcile, istio leaves old tables: got %s", got)
	}
	mustApply(t, pod, plain, PlanOptions{Reconcile: true})
	if got := ruleset(t, pod); got != injectedRuleset {
		t.Fatalf("after --reconcile:\n%s\nwant:\n%s", got, injectedRuleset)
	}
}

// TestRealAtomic: a transaction nft refuses changes nothing, not even its valid first part.
func TestRealAtomic(t *testing.T) {
	podtest.RequireRoot(t, rootNeed)
	pod := newPod(t, "atomic")
	mustApply(t, pod, build(t, injectedArgs...), PlanOptions{})
	bad := build(t, "-i", "*", "-b", "8080")
	bad.Rules = append(bad.Rules, Rule{Table: TableNat, Chain: chainOutputX, Words: []string{"skgid", "no-such-group-mc", counter, "return"}})
	err := Apply(context.Background(), Plan(bad, PlanOptions{}), pod.NetnsPath)
	if err == nil || !strings.Contains(err.Error(), "nftables run failed") {
		t.Fatalf("bad transaction: %v", err)
	}
	if got := ruleset(t, pod); got != injectedRuleset {
		t.Fatalf("a failed transaction changed the ruleset:\n%s", got)
	}
}

// TestRealGoldensApply: nft accepts every golden transaction (the owner-group cases only where the group exists).
func TestRealGoldensApply(t *testing.T) {
	podtest.RequireRoot(t, rootNeed)
	pod := newPod(t, "goldens")
	for _, gc := range loadCases(t) {
		if _, err := (capture.Config{OwnerGroupsInclude: "*", OwnerGroupsExclude: strings.Join(gc.Groups, ",")}).ResolveOwnerGroups(capture.OSGroupLookup); err != nil {
			t.Logf("%s: skipped for real apply: %v (the CLI replay in test/ provides the group)", gc.Name, err)
			continue
		}
		rs, err := Build(parseArgs(t, gc.Args, gc.Env), gc.Facts())
		if err != nil {
			t.Fatal(err)
		}
		if err := Apply(context.Background(), Plan(rs, PlanOptions{Reconcile: true}), pod.NetnsPath); err != nil {
			t.Fatalf("%s: %v", gc.Name, err)
		}
		if got := ruleset(t, pod); !strings.Contains(got, "table inet istio-proxy-nat") {
			t.Fatalf("%s: no nat table:\n%s", gc.Name, got)
		}
	}
}
