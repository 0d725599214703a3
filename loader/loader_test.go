package loader

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/hostfs"
)

func outRequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root: loads BPF programs and creates cgroups (CI must run as root)")
		}
		t.Skip("needs root: loads BPF programs and creates cgroups")
	}
}

func outSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newCgroup creates a cgroup of the test's own under the cgroup2 root, removed in Cleanup.
func outNewCgroup(t *testing.T) string {
	t.Helper()
	root, err := hostfs.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "meshcap-loadertest-"+outSuffix())
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Processes left in it (a failed child) would keep rmdir from working.
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// outNewPinRoot returns a pin root of the test's own on a private bpffs instance mounted for this test (so the
// test neither needs nor touches a system-wide /sys/fs/bpf); detached, unpinned and unmounted in Cleanup.
func outNewPinRoot(t *testing.T) string {
	t.Helper()
	mnt, err := os.MkdirTemp("", "meshcap-bpffs-"+outSuffix())
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(mnt)
		t.Fatalf("mount bpffs at %s: %v", mnt, err)
	}
	root := filepath.Join(mnt, "meshcap")
	t.Cleanup(func() {
		_, _ = DetachAll(root)
		_ = os.RemoveAll(root)
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		_ = os.Remove(mnt)
	})
	return root
}

func outPolicy(t *testing.T, mod func(*capture.Config)) capture.Policy {
	t.Helper()
	c := capture.Default()
	c.ProxyUID, c.ProxyGID = "1337", "1337"
	c.OutboundIPRangesInclude = "*"
	if mod != nil {
		mod(&c)
	}
	p, err := c.Policy()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// attachedProgs lists the program ids attached to cgroup dir for attach type at.
func outAttachedProgs(t *testing.T, dir string, at ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: outCgroupFD(t, dir), Attach: at})
	if err != nil {
		t.Fatalf("query %s: %v", at, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

func outCgroupFD(t *testing.T, dir string) int {
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func TestLoadVerifies(t *testing.T) {
	outRequireRoot(t)
	objs, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	for _, h := range append(append([]hook{}, hooks...), fastPathHook) {
		if objs.Programs[h.name] == nil {
			t.Errorf("program %s not loaded", h.name)
		}
	}
	if want := len(settingsMaps) + len(stateMaps); len(objs.Maps) != want {
		t.Errorf("want %d shared maps, got %d", want, len(objs.Maps))
	}
	// Every hook must use the same map instance: ids of the maps each program references.
	want := map[ebpf.MapID]bool{}
	for _, m := range objs.Maps {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		want[id] = true
	}
	for name, p := range objs.Programs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		ids, _ := info.MapIDs()
		for _, id := range ids {
			if m, err := ebpf.NewMapFromID(id); err == nil {
				mi, _ := m.Info()
				m.Close()
				if mi != nil && strings.HasSuffix(mi.Name, ".rodata") {
					continue // the object's own load-time settings (variant.go), private by design
				}
			}
			if !want[id] {
				t.Errorf("program %s uses map id %d outside the shared set", name, id)
			}
		}
	}
	if err := objs.SetPolicy(0, outPolicy(t, nil)); err != nil {
		t.Fatal(err)
	}
	if err := objs.SetPolicy(42, outPolicy(t, func(c *capture.Config) { c.OutboundIPRangesInclude = "10.0.0.0/8" })); err != nil {
		t.Fatal(err)
	}
	if err := objs.DeletePolicy(42); err != nil {
		t.Fatal(err)
	}
	if n, _ := countEntries(objs.Maps[mapCIDRIncl]); n != 0 {
		t.Errorf("DeletePolicy left %d CIDR entries", n)
	}
}

func TestEnumsMatchHeader(t *testing.T) {
	b, err := os.ReadFile("../bpf/include/meshcap.h")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		`MC_F_OUTBOUND_ALL = 1 << 0`, `MC_F_LOOPBACK_INCLUDED = 1 << 1`, `MC_F_FAST_PATH = 1 << 2`, `MC_F_IPV6 = 1 << 3`,
		`MC_F_GROUPS_INCLUDE = 1 << 4`, `MC_F_GROUPS_EXCLUDE = 1 << 5`,
		`MC_FP_REDIRECT_MSGS = 0`, `MC_FP_REDIRECT_BYTES = 1`, `MC_FP_PASS_MSGS = 2`,
		`MC_PORT_OUT_EXCLUDE = 1`, `MC_PORT_OUT_INCLUDE = 2`, `#define MC_MAX_IDS 8`,
		`#define MC_ORIGDST_F_FAST_PATH 1`, `#define MC_SO_CAPTURE_STATS 0x4d43`,
	} {
		if !strings.Contains(string(b), name) {
			t.Errorf("header no longer has %q: update the constants in objects.go", name)
		}
	}
	if flagOutboundAll != 1 || flagLoopbackIncluded != 2 || flagFastPath != 4 || flagIPv6 != 8 || flagGroupsInclude != 16 || flagGroupsExclude != 32 || portOutExclude != 1 || portOutInclude != 2 ||
		maxIDs != 8 || origDstFastPath != 1 || mcSoCaptureStats != 0x4d43 {
		t.Error("Go constants differ from the header")
	}
	if b, err := os.ReadFile("../bpf/include/dns.h"); err != nil || !strings.Contains(string(b), "MC_DNS_F_ALL = 1 << 0") || dnsFlagAll != 1 {
		t.Errorf("dns.h no longer has MC_DNS_F_ALL = 1 << 0 (%v): update dnsFlagAll in dns.go", err)
	}
}

func TestAttachDetachPins(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	p := outPolicy(t, nil)

	a, err := Attach(cg, p, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Replaced {
		t.Error("first attach reported Replaced")
	}
	for _, h := range hooks {
		if _, err := os.Stat(linkPin(a.PinDir, h.name)); err != nil {
			t.Errorf("link pin %s: %v", h.name, err)
		}
		if ids := outAttachedProgs(t, cg, h.attach); len(ids) != 1 {
			t.Errorf("%s: %d programs attached, want 1", h.name, len(ids))
		}
	}
	st, err := GetStatus(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Attachments) != 1 || st.Attachments[0].CgroupPath != cg || st.Attachments[0].ProxyPort != 15001 {
		t.Fatalf("status: %+v", st)
	}
	for _, m := range st.Attachments[0].Maps {
		if m.Err != "" {
			t.Errorf("map %s: %s", m.Name, m.Err)
		}
		if m.Name == mapConfig && m.Entries != 1 {
			t.Errorf("mc_config has %d entries, want 1", m.Entries)
		}
	}

	// Attach twice: settings replaced, still one program per hook.
	p2 := outPolicy(t, func(c *capture.Config) { c.ProxyPort = "15123"; c.OutboundPortsExclude = "81,82" })
	a2, err := Attach(cg, p2, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !a2.Replaced || a2.PinDir != a.PinDir {
		t.Errorf("second attach: %+v", a2)
	}
	for _, h := range hooks {
		if ids := outAttachedProgs(t, cg, h.attach); len(ids) != 1 {
			t.Errorf("after re-attach %s: %d programs attached, want 1", h.name, len(ids))
		}
	}
	st, _ = GetStatus(root)
	if st.Attachments[0].ProxyPort != 15123 {
		t.Errorf("re-attach did not replace the proxy port: %d", st.Attachments[0].ProxyPort)
	}
	if n, _ := MapEntries(a.PinDir, mapPorts); n != 2 {
		t.Errorf("mc_ports has %d entries after re-attach, want 2", n)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(a.PinDir, "*_new")); len(leftovers) != 0 {
		t.Errorf("temporary pins left: %v", leftovers)
	}

	for i := 0; i < 2; i++ {
		was, err := Detach(cg, root)
		if err != nil {
			t.Fatalf("detach %d: %v", i, err)
		}
		if was != (i == 0) {
			t.Errorf("detach %d reported attached=%v", i, was)
		}
	}
	for _, h := range hooks {
		if ids := outAttachedProgs(t, cg, h.attach); len(ids) != 0 {
			t.Errorf("after detach %s still has %d programs", h.name, len(ids))
		}
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin root still there after detach: %v", err)
	}
	if removed, err := DetachAll(root); err != nil || len(removed) != 0 {
		t.Errorf("DetachAll on nothing: %v %v", removed, err)
	}
}

func TestDetachAllTwoCgroups(t *testing.T) {
	outRequireRoot(t)
	cg1, cg2 := outNewCgroup(t), outNewCgroup(t)
	root := outNewPinRoot(t)
	if _, err := Attach(cg1, outPolicy(t, nil), root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(cg2, outPolicy(t, func(c *capture.Config) { c.ProxyPort = "15002" }), root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	st, _ := GetStatus(root)
	if len(st.Attachments) != 2 {
		t.Fatalf("want 2 attachments, got %+v", st)
	}
	removed, err := DetachAll(root)
	if err != nil || len(removed) != 2 {
		t.Fatalf("DetachAll: %v %v", removed, err)
	}
	for _, cg := range []string{cg1, cg2} {
		for _, h := range hooks {
			if ids := outAttachedProgs(t, cg, h.attach); len(ids) != 0 {
				t.Errorf("%s %s still attached", cg, h.name)
			}
		}
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin root left: %v", err)
	}
}

func TestAttachPreconditions(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	p := outPolicy(t, nil)
	notBPF := t.TempDir()
	for _, tc := range []struct {
		name, cgroup, pinRoot, want string
		pol                         capture.Policy
	}{
		{"missing cgroup", cg + "-nope", root, "no such file", p},
		{"not cgroup2", notBPF, root, "is not on a cgroup2 filesystem", p},
		{"pin root not bpffs", cg, filepath.Join(notBPF, "pins"), "is not on a bpf filesystem", p},
		{"too many uids", cg, root, "too many proxy uids", outPolicy(t, func(c *capture.Config) { c.ProxyUID = "1,2,3,4,5,6,7,8,9" })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Attach(tc.cgroup, tc.pol, tc.pinRoot, LoadOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin root created on failure")
			}
			for _, h := range hooks {
				if ids := outAttachedProgs(t, cg, h.attach); len(ids) != 0 {
					t.Errorf("%s attached on failure", h.name)
				}
			}
		})
	}
}

func TestLPMKeyAndConfig(t *testing.T) {
	k := newLPMKey(0x1122334455667788, netip.MustParsePrefix("10.1.2.3/8"))
	if k.Prefixlen != 72 || k.CfgHi != 0x11223344 || k.CfgLo != 0x55667788 || addrFromBE32(k.Addr) != netip.MustParseAddr("10.0.0.0") {
		t.Errorf("lpm key: %+v", k)
	}
	c, err := configFor(outPolicy(t, func(cfg *capture.Config) {
		cfg.OutboundIPRangesInclude = "127.0.0.0/8,10.0.0.0/8"
		cfg.HostIPv4LoopbackCIDR = "127.0.0.0/16"
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Flags != flagLoopbackIncluded || addrFromBE32(c.LoopbackMask) != netip.MustParseAddr("255.255.0.0") ||
		addrFromBE32(c.LoopbackAddr) != netip.MustParseAddr("127.0.0.0") || c.N_uids != 1 || c.Uids[0] != 1337 {
		t.Errorf("config: %+v", c)
	}
}
