package loader

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

func probeNeedsRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root: loads and attaches BPF programs (CI=true, so this is a failure)")
		}
		t.Skip("needs root: loads and attaches BPF programs")
	}
}

func findCheck(t *testing.T, checks []FeatureCheck, name string) FeatureCheck {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check named %q", name)
	return FeatureCheck{}
}

func leftoverProbeCgroups(t *testing.T) []string {
	t.Helper()
	mnt, err := hostfs.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := filepath.Glob(filepath.Join(mnt, "meshcap-probe-"+strconv.Itoa(os.Getpid())+"-*"))
	return m
}

func TestProbeThisKernelSaysEBPF(t *testing.T) {
	probeNeedsRoot(t)
	t.Setenv(ProbeDisableEnv, "")
	checks, err := Probe(ProbeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		t.Logf("%-45s %-5v %s", c.Name, c.OK, c.Detail)
	}
	d := DecideMode(checks, ProbeRequirements{Inbound: true})
	if d.Mode != ProbeModeEBPF {
		t.Fatalf("mode = %s (%s), want ebpf on this kernel", d.Mode, d.Reason)
	}
	for _, name := range []string{"cgroup2", "bpffs", "attach:connect4", "attach:sockops", "attach:getsockopt",
		"attach:getpeername4", "attach:connect6", "attach:getpeername6", "attach:sock_release", "attach:sk_lookup", "helper:cgroup_sock_addr:get_current_uid_gid",
		"helper:cgroup_sock:sk_storage_get", "helper:cgroup_sock_addr:spin_lock",
		"helper:sk_lookup:sk_assign", "helper:cgroup_sockopt:get_netns_cookie"} {
		if c := findCheck(t, checks, name); !c.OK {
			t.Errorf("%s failed: %s", name, c.Detail)
		}
	}
	if c := findCheck(t, checks, "attach:connect4"); !strings.Contains(c.Detail, "temporary cgroup") {
		t.Errorf("attach:connect4 detail %q: want the temporary cgroup", c.Detail)
	}
	if c := findCheck(t, checks, "attach:sk_lookup"); !strings.Contains(c.Detail, "temporary netns") {
		t.Errorf("attach:sk_lookup detail %q: want a temporary netns", c.Detail)
	}
	if left := leftoverProbeCgroups(t); len(left) > 0 {
		t.Errorf("probe left cgroups behind: %v", left)
	}
}

// TestProbeDisableConnectSaysIPTables: without connect4, connect6 or getpeername6 (an AF_INET6 socket to an
// IPv4-mapped destination would bypass capture, or see the proxy as its peer) the mode is iptables.
func TestProbeDisableConnectSaysIPTables(t *testing.T) {
	probeNeedsRoot(t)
	for _, hook := range []string{"connect4", "connect6", "getpeername6"} {
		t.Setenv(ProbeDisableEnv, hook)
		checks, err := Probe(ProbeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		name := "attach:" + hook
		c := findCheck(t, checks, name)
		if c.OK || c.Detail != "disabled by MESHCAP_PROBE_DISABLE" {
			t.Fatalf("%s = %+v, want disabled", name, c)
		}
		if c := findCheck(t, checks, "attach:sockops"); !c.OK {
			t.Errorf("attach:sockops should still pass: %s", c.Detail)
		}
		d := DecideMode(checks, ProbeRequirements{Inbound: true})
		if d.Mode != ProbeModeIPTables {
			t.Fatalf("%s disabled: mode = %s, want iptables", hook, d.Mode)
		}
		if !slices.Equal(d.Missing, []string{name}) || !strings.Contains(d.Reason, name+" (disabled by MESHCAP_PROBE_DISABLE)") {
			t.Fatalf("decision %+v: want %s named as missing", d, name)
		}
	}
}

func TestProbeDisableSkLookupOnlyMattersForInbound(t *testing.T) {
	probeNeedsRoot(t)
	checks, err := Probe(ProbeOptions{Disable: []string{"sk_lookup"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"prog:sk_lookup", "attach:sk_lookup", "helper:sk_lookup:sk_assign"} {
		if c := findCheck(t, checks, name); c.OK {
			t.Errorf("%s passed, want disabled", name)
		}
	}
	if d := DecideMode(checks, ProbeRequirements{Inbound: true}); d.Mode != ProbeModeIPTables {
		t.Errorf("with inbound: mode %s, want iptables", d.Mode)
	}
	if d := DecideMode(checks, ProbeRequirements{Inbound: false}); d.Mode != ProbeModeEBPF {
		t.Errorf("without inbound: mode %s (%s), want ebpf", d.Mode, d.Reason)
	}
}

func TestParseProbeDisable(t *testing.T) {
	got, err := ParseProbeDisable(" connect4,,helper:sock_ops:get_netns_cookie,get_current_uid_gid,bpffs ")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"connect4", "helper:sock_ops:get_netns_cookie", "get_current_uid_gid", "bpffs"}; !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if _, err := ParseProbeDisable("connect4,conect6"); err == nil || !strings.Contains(err.Error(), `"conect6"`) {
		t.Fatalf("err = %v, want one naming \"conect6\"", err)
	}
	if _, err := Probe(ProbeOptions{Disable: []string{"nope"}}); err == nil {
		t.Fatal("Probe accepted an unknown feature")
	}
}

func TestDisableMatches(t *testing.T) {
	for _, tc := range []struct {
		tok, check string
		want       bool
	}{
		{"connect4", "attach:connect4", true},
		{"attach:connect4", "attach:connect4", true},
		{"sk_lookup", "helper:sk_lookup:sk_assign", true},
		{"get_netns_cookie", "helper:sock_ops:get_netns_cookie", true},
		{"connect", "attach:connect4", false},
		{"cgroup2", "cgroup2", true},
	} {
		if got := disableMatches(tc.tok, tc.check); got != tc.want {
			t.Errorf("disableMatches(%q, %q) = %v", tc.tok, tc.check, got)
		}
	}
}

func TestDecideMode(t *testing.T) {
	all := []FeatureCheck{
		{Name: "cgroup2", Scope: ScopeCore, OK: true},
		{Name: "attach:sk_lookup", Scope: ScopeInbound, OK: true},
		{Name: "iptables", Scope: ScopeFallback, OK: false, Detail: "none"},
	}
	if d := DecideMode(all, ProbeRequirements{Inbound: true}); d.Mode != ProbeModeEBPF || len(d.Missing) != 0 {
		t.Fatalf("all present: %+v", d)
	}
	noCg := slices.Clone(all)
	noCg[0].OK, noCg[0].Detail = false, "no cgroup2 filesystem"
	d := DecideMode(noCg, ProbeRequirements{})
	if d.Mode != ProbeModeIPTables || d.Reason != "missing: cgroup2 (no cgroup2 filesystem); warning: iptables: none" {
		t.Fatalf("no cgroup2: %+v", d)
	}
	noSk := slices.Clone(all)
	noSk[1].OK = false
	if d := DecideMode(noSk, ProbeRequirements{Inbound: false}); d.Mode != ProbeModeEBPF {
		t.Fatalf("sk_lookup missing, inbound off: %+v", d)
	}
	if d := DecideMode(noSk, ProbeRequirements{Inbound: true}); d.Mode != ProbeModeIPTables || d.Missing[0] != "attach:sk_lookup" {
		t.Fatalf("sk_lookup missing, inbound on: %+v", d)
	}
}

func TestParseCgroupV2Path(t *testing.T) {
	got, err := parseCgroupV2Path("12:pids:/x\n1:name=systemd:/y\n0::/kubepods/pod1/abc\n")
	if err != nil || got != "/kubepods/pod1/abc" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := parseCgroupV2Path("1:name=systemd:/y\n"); err == nil {
		t.Fatal("want error without a 0:: line")
	}
}

// TestKernelNames: check names spell types and helpers as the kernel's enums do (the names `meshcap probe`, the
// recorded probes and MESHCAP_PROBE_DISABLE use).
func TestKernelNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{helperName(asm.FnGetCurrentUidGid), "get_current_uid_gid"},
		{helperName(asm.FnSockOpsCbFlagsSet), "sock_ops_cb_flags_set"},
		{progTypeName(ebpf.CGroupSockAddr), "cgroup_sock_addr"},
		{progTypeName(ebpf.CGroupSockopt), "cgroup_sockopt"},
		{progTypeName(ebpf.SockOps), "sock_ops"},
		{progTypeName(ebpf.SkLookup), "sk_lookup"},
		{progTypeName(ebpf.SkMsg), "sk_msg"},
		{mapTypeName(ebpf.LPMTrie), "lpm_trie"},
		{mapTypeName(ebpf.PerCPUArray), "percpu_array"},
		{mapTypeName(ebpf.SockMap), "sockmap"},
		{mapTypeName(ebpf.SockHash), "sockhash"},
		{mapTypeName(ebpf.SkStorage), "sk_storage"},
		{mapTypeName(ebpf.LRUHash), "lru_hash"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestFindPodCgroup(t *testing.T) {
	root := t.TempDir()
	uid := "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
	sysd := filepath.Join(root, "kubepods.slice", "kubepods-burstable.slice", "kubepods-burstable-pod"+strings.ReplaceAll(uid, "-", "_")+".slice")
	other := filepath.Join(root, "kubepods.slice", "kubepods-podffff.slice", "cri-containerd-x.scope")
	for _, d := range []string{sysd + "/cri-containerd-abc.scope", other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := FindPodCgroup(root, uid)
	if err != nil || got != sysd {
		t.Fatalf("systemd layout: %q %v", got, err)
	}
	root2 := t.TempDir()
	cgfs := filepath.Join(root2, "kubepods", "besteffort", "pod"+uid)
	os.MkdirAll(cgfs, 0o755)
	if got, err := FindPodCgroup(root2, uid); err != nil || got != cgfs {
		t.Fatalf("cgroupfs layout: %q %v", got, err)
	}
	if _, err := FindPodCgroup(root2, "nope"); err == nil {
		t.Fatal("found a missing pod")
	}
	if _, err := FindPodCgroup(root2, "../x"); err == nil {
		t.Fatal("accepted a bad UID")
	}
}
