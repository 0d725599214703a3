package loader

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/meshcap/meshcap/pkg/capture"
)

// storageVariantEnv makes the probe treat the netns-cookie helper of sockops and getsockopt as missing, as on
// Linux 5.10, so the loader picks the sock_create variant on this kernel too.
const storageVariantEnv = "helper:sock_ops:get_netns_cookie,helper:cgroup_sockopt:get_netns_cookie"

// TestChooseVariantRecordedProbes: the probe results recorded by `meshcap probe --json` on each kernel of the
// matrix (testdata/probe/<kernel>.json, captured in the VMs of test/kernels) give the variant and modes measured
// there: 5.10 reads the cookie recorded by sock_create, and has agent mode through the loader's netns cookie reader
// (no SO_NETNS_COOKIE there); the others use the helper.
func TestChooseVariantRecordedProbes(t *testing.T) {
	want := map[string]struct {
		variant NetnsSource
		agent   string
	}{
		"5.10": {NetnsFromStorage, ProbeModeEBPF},
		"6.1":  {NetnsFromHelper, ProbeModeEBPF},
		"6.12": {NetnsFromHelper, ProbeModeEBPF},
		"7.2":  {NetnsFromHelper, ProbeModeEBPF},
		"6.18": {NetnsFromHelper, ProbeModeEBPF},
	}
	for kernel, w := range want {
		t.Run(kernel, func(t *testing.T) {
			checks := recordedProbe(t, kernel)
			if got := ChooseVariant(checks); got.Netns != w.variant {
				t.Errorf("variant %s, want %s", got, Variant{Netns: w.variant})
			}
			if d := DecideMode(checks, ProbeRequirements{Inbound: true}); d.Mode != ProbeModeEBPF || d.Variant != (Variant{Netns: w.variant}).String() {
				t.Errorf("per-pod mode: %+v, want ebpf with variant %s", d, Variant{Netns: w.variant})
			}
			if d := DecideMode(checks, ProbeRequirements{Inbound: true, Agent: true}); d.Mode != w.agent {
				t.Errorf("agent mode: %+v, want %s", d, w.agent)
			}
		})
	}
}

func recordedProbe(t *testing.T, kernel string) []FeatureCheck {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "probe", kernel+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Checks []FeatureCheck `json:"checks"`
	}
	if err := json.Unmarshal(data, &out); err != nil || len(out.Checks) == 0 {
		t.Fatalf("testdata/probe/%s.json: %v (%d checks)", kernel, err, len(out.Checks))
	}
	return out.Checks
}

func TestChooseVariantMissingCheck(t *testing.T) {
	one := []FeatureCheck{{Name: "helper:sock_ops:get_netns_cookie", OK: true}}
	if v := ChooseVariant(one); v.Netns != NetnsFromStorage {
		t.Errorf("getsockopt's helper not probed: %s, want the storage variant", v)
	}
}

// loadedSetting returns mc_netns_from_storage as the kernel holds it for p: the value of p's own .rodata map.
func loadedSetting(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		mi, err := m.Info()
		if err != nil || !strings.HasSuffix(mi.Name, ".rodata") {
			continue
		}
		if m.ValueSize() != 4 {
			t.Fatalf(".rodata of %s holds %d bytes, want only mc_netns_from_storage", info.Name, m.ValueSize())
		}
		var v uint32
		if err := m.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	t.Fatalf("program %s has no .rodata map", info.Name)
	return 0
}

// progName is the name the kernel holds for p (its entry point's name, at most 15 characters).
func progName(t *testing.T, p *ebpf.Program) string {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.Name
}

// TestLoadVariants: the variant the probe picks is the one the kernel runs (the setting in each program's
// read-only data, which the verifier treats as a constant and prunes by; and sockops's entry point). That 5.10's
// verifier never sees the branch not taken is proven by loading there (test/kernels).
func TestLoadVariants(t *testing.T) {
	outRequireRoot(t)
	for _, tc := range []struct {
		env  string
		want NetnsSource
	}{{"", NetnsFromHelper}, {storageVariantEnv, NetnsFromStorage}} {
		t.Run(Variant{Netns: tc.want}.String(), func(t *testing.T) {
			t.Setenv(ProbeDisableEnv, tc.env)
			objs, err := Load(LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer objs.Close()
			if objs.Variant.Netns != tc.want {
				t.Fatalf("loaded %s", objs.Variant)
			}
			wantSockops := sockopsProgMcSockops
			if tc.want == NetnsFromStorage {
				wantSockops = sockopsProgMcSockopsBtf
			}
			if got := progName(t, objs.Programs["sockops"]); got != wantSockops {
				t.Errorf("sockops entry point %s, want %s", got, wantSockops)
			}
			for _, h := range []string{"sockops", "getsockopt", "sockcreate"} {
				if got, want := loadedSetting(t, objs.Programs[h]), uint32(tc.want); got != want {
					t.Errorf("%s: mc_netns_from_storage = %d, want %d", h, got, want)
				}
			}
		})
	}
}

// TestCaptureNetnsFromStorage: capture in a cgroup with the 5.10 variant loaded on this kernel: every captured
// connection's original destination reaches the proxy through SO_ORIGINAL_DST, which then depends on the cookie
// sock_create recorded for the proxy's listener and that its accepted sockets inherited.
func TestCaptureNetnsFromStorage(t *testing.T) {
	outRequireRoot(t)
	t.Setenv(ProbeDisableEnv, storageVariantEnv)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	p := outPolicy(t, func(c *capture.Config) {
		c.ProxyPort = "15012"
		c.OutboundIPRangesInclude = "203.0.113.0/24"
	})
	if _, err := Attach(cg, p, root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	var dests []string
	for i := 1; i <= 20; i++ {
		dests = append(dests, fmt.Sprintf("203.0.113.%d:%d", i, 2000+i))
	}
	out := outRunChild(t, cg, childArgs{ProxyPort: 15012, Dests: dests, UID: -1, GID: -1, PinRoot: root})
	if len(out.Results) != len(dests) {
		t.Fatalf("got %d results, want %d", len(out.Results), len(dests))
	}
	for _, r := range out.Results {
		if !r.Captured || r.OrigDst != r.Dest || r.Peer != r.Dest || !strings.HasPrefix(r.ProxyKey[0], "127.0.0.1:15012") {
			t.Errorf("%s: captured=%v SO_ORIGINAL_DST=%s peer=%s proxy=%v err=%q", r.Dest, r.Captured, r.OrigDst, r.Peer, r.ProxyKey, r.Err)
		}
	}
}

// TestCaptureNetnsFromStorageListenerFirst: the 5.10 variant with the proxy listening before capture is attached
// (sock_create never saw its listener, so its accepted sockets inherit no cookie). sockops reads their netns cookie
// through BTF and records it, so SO_ORIGINAL_DST (plain socket API, IPv4, IPv4-mapped and native IPv6) and the
// pinned map both give each connection's exact original destination.
func TestCaptureNetnsFromStorageListenerFirst(t *testing.T) {
	outRequireRoot(t)
	t.Setenv(ProbeDisableEnv, storageVariantEnv)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	dests := []string{"203.0.113.7:80", "203.0.113.8:9090", "mapped:203.0.113.9:81", "[2001:db8:1::7]:80"}
	a := childArgs{ProxyPort: 15011, Dests: dests, UID: -1, GID: -1, PinRoot: root, Listen6: true, ListenFirst: true}
	out := outRunChildWithCookie(t, cg, a, func(uint64) {
		if _, err := Attach(cg, ipv6Policy(t, true), root, LoadOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	ids := outAttachedProgs(t, cg, ebpf.AttachCGroupSockOps)
	if len(ids) != 1 {
		t.Fatalf("%d sockops programs attached, want 1", len(ids))
	}
	p, err := ebpf.NewProgramFromID(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := progName(t, p); got != sockopsProgMcSockopsBtf {
		t.Errorf("sockops program attached: %s, want %s", got, sockopsProgMcSockopsBtf)
	}
	if len(out.Results) != len(dests) {
		t.Fatalf("got %d results, want %d", len(out.Results), len(dests))
	}
	for _, r := range out.Results {
		d, _ := strings.CutPrefix(r.Dest, "mapped:")
		if !r.Captured || r.OrigDst != d || r.MapDst != d {
			t.Errorf("%s: captured=%v SO_ORIGINAL_DST=%s OrigDst()=%s err=%q; want %s from both",
				r.Dest, r.Captured, r.OrigDst, r.MapDst, r.Err, d)
		}
	}
}

func TestProcNetListeners(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A98 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1337        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
`
	if got := procNetListeners(table, 15000); len(got) != 1 || got[0] != 4242 {
		t.Errorf("listeners on 15000: %v, want [4242] (the established socket on that port is not one)", got)
	}
	if got := procNetListeners(table, 8080); len(got) != 1 || got[0] != 4444 {
		t.Errorf("listeners on 8080: %v, want [4444]", got)
	}
	if got := procNetListeners(table, 15006); len(got) != 0 {
		t.Errorf("listeners on 15006: %v, want none", got)
	}
}

// TestReattachAddsSockCreate: an attachment made before the sock_create hook existed (no link_sockcreate pin, no
// mc_sk_netns pin) is upgraded in place by the next attach: the hook is attached and pinned, the others replaced,
// and capture works with the 5.10 variant, which depends on it.
func TestReattachAddsSockCreate(t *testing.T) {
	outRequireRoot(t)
	t.Setenv(ProbeDisableEnv, storageVariantEnv)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	p := outPolicy(t, func(c *capture.Config) { c.ProxyPort = "15013"; c.OutboundIPRangesInclude = "203.0.113.0/24" })
	a, err := Attach(cg, p, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Make it look like an older attachment.
	old, err := link.LoadPinnedLink(linkPin(a.PinDir, "sockcreate"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Unpin(); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil { // unpinned and closed: the kernel detaches it
		t.Fatal(err)
	}
	if err := os.Remove(mapPin(a.PinDir, mapSkNetns)); err != nil {
		t.Fatal(err)
	}
	if ids := outAttachedProgs(t, cg, ebpf.AttachCGroupInetSockCreate); len(ids) != 0 {
		t.Fatalf("%d sock_create programs after removing the link, want 0", len(ids))
	}
	again, err := Attach(cg, p, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replaced {
		t.Error("re-attach of the older attachment did not replace it in place")
	}
	for _, pin := range []string{linkPin(a.PinDir, "sockcreate"), mapPin(a.PinDir, mapSkNetns)} {
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("after re-attach: %v", err)
		}
	}
	if ids := outAttachedProgs(t, cg, ebpf.AttachCGroupInetSockCreate); len(ids) != 1 {
		t.Errorf("%d sock_create programs after re-attach, want 1", len(ids))
	}
	out := outRunChild(t, cg, childArgs{ProxyPort: 15013, Dests: []string{"203.0.113.9:80"}, UID: -1, GID: -1, PinRoot: root})
	if len(out.Results) != 1 || !out.Results[0].Captured || out.Results[0].OrigDst != "203.0.113.9:80" {
		t.Errorf("capture after the upgrade: %+v", out.Results)
	}
}
