package test

import (
	"strings"
	"testing"
)

// podModes reports what capture the pod has: eBPF pins (outbound for its cgroup, inbound for any netns) and
// ISTIO chains in its netns.
func podModes(t *testing.T, pin string, cgroupDir string, ruleDump func() string) (ebpf, rules bool) {
	t.Helper()
	st := ebStatus(t, pin)
	for _, a := range st.Attachments {
		if a.CgroupPath == cgroupDir {
			ebpf = true
		}
	}
	if out, err := runMeshcap(t, "status", "--json", "--pin-dir", pin); err == nil && strings.Contains(out, `"netnsCookie"`) {
		ebpf = true
	}
	return ebpf, strings.Contains(ruleDump(), "ISTIO_")
}

// TestInitAutoReRunLeavesOneMode: `meshcap init --mode auto` with a failure injected at every position of the eBPF
// set-up (MESHCAP_FAILPOINT), on a fresh pod and re-run after an eBPF capture, falls back to istio's rules with no
// eBPF capture left; run again without the failure, it is back to eBPF with no rules left. Never both, never none.
func TestInitAutoReRunLeavesOneMode(t *testing.T) {
	requireRoot(t)
	for _, fp := range []string{"capture-before", "capture-after-outbound", "capture-after-inbound", "init-after-ebpf"} {
		t.Run(fp, func(t *testing.T) {
			pod, peer := newPod(t, "onem"), newPod(t, "onep")
			linkPods(t, pod, peer) // istio's rules need a pod IP
			pin := ebPinRoot(t)
			args := append([]string{"--mode", "auto", "--cgroup", pod.CgroupDir, "--pin-root", pin}, istioInitArgs...)
			rules := func() string {
				a, _ := runIn(t, pod, nil, "iptables-nft-save")
				b, _ := runIn(t, pod, nil, "iptables-legacy-save")
				return a + b
			}
			for i, step := range []struct {
				env       []string
				wantEBPF  bool
				wantRules bool
			}{
				{[]string{"MESHCAP_FAILPOINT=" + fp}, false, true}, // a first run that fails part way
				{nil, true, false},
				{[]string{"MESHCAP_FAILPOINT=" + fp}, false, true}, // a re-run after a full eBPF success
				{nil, true, false},
			} {
				if _, err := runInitIn(t, pod, step.env, args...); err != nil {
					t.Fatalf("run %d: init: %v", i, err)
				}
				ebpf, ipt := podModes(t, pin, pod.CgroupDir, rules)
				if ebpf != step.wantEBPF || ipt != step.wantRules {
					t.Fatalf("run %d (env %v): eBPF capture %v, istio rules %v; want eBPF %v, rules %v", i, step.env, ebpf, ipt, step.wantEBPF, step.wantRules)
				}
			}
		})
	}
}

// TestInitAutoNftablesLeavesOneMode: with --native-nftables, a failed eBPF set-up falls back to istio's nftables
// tables with no eBPF capture left; the re-run that succeeds with eBPF removes those tables (and so does one after).
func TestInitAutoNftablesLeavesOneMode(t *testing.T) {
	requireRoot(t)
	pod, peer := newPod(t, "onen"), newPod(t, "onnp")
	linkPods(t, pod, peer) // istio's rules need a pod IP
	pin := ebPinRoot(t)
	args := append([]string{"--mode", "auto", "--native-nftables", "--cgroup", pod.CgroupDir, "--pin-root", pin}, istioInitArgs...)
	tables := func() string { return nftRuleset(t, pod) }
	for i, step := range []struct {
		env        []string
		wantEBPF   bool
		wantTables bool
	}{
		{[]string{"MESHCAP_FAILPOINT=capture-after-inbound"}, false, true},
		{nil, true, false},
		{[]string{"MESHCAP_FAILPOINT=init-after-ebpf"}, false, true},
		{nil, true, false},
	} {
		if _, err := runInitIn(t, pod, step.env, args...); err != nil {
			t.Fatalf("run %d: init: %v", i, err)
		}
		ebpf, _ := podModes(t, pin, pod.CgroupDir, func() string { return "" })
		nft := strings.Contains(tables(), "table inet istio-proxy-nat")
		if ebpf != step.wantEBPF || nft != step.wantTables {
			t.Fatalf("run %d (env %v): eBPF capture %v, istio nft tables %v; want eBPF %v, tables %v\n%s", i, step.env, ebpf, nft,
				step.wantEBPF, step.wantTables, tables())
		}
	}
}
