package loader

// Feature probing: decides whether this kernel (and these privileges) can run eBPF capture, or whether the
// istio-exact iptables rules must be used instead.
//
// Every check is real: program types, map types and helpers through cilium/ebpf's features package, and each
// program and attach type by loading a minimal pass-through program and attaching it to a temporary cgroup
// (sk_lookup: a temporary network namespace; sk_msg: a temporary sockhash) that is removed again. Which types,
// attach points, maps and helpers are checked is derived from the hook table (probe_hooks.go). MESHCAP_PROBE_DISABLE=<feature,...>
// marks features missing without running them, so that the fallback is testable on a kernel that has
// everything.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

// ProbeDisableEnv names the environment variable listing features to treat as missing.
const ProbeDisableEnv = "MESHCAP_PROBE_DISABLE"

// DefaultBPFFSPath is where meshcap pins links and maps.
const DefaultBPFFSPath = "/sys/fs/bpf"

// Modes a probe can decide on.
const (
	ProbeModeEBPF     = "ebpf"
	ProbeModeIPTables = "iptables"
)

// Scopes of a check: what it is needed for.
const (
	ScopeCore     = "core"     // needed for any eBPF capture (outbound, SO_ORIGINAL_DST, getpeername)
	ScopeInbound  = "inbound"  // needed for eBPF inbound capture (sk_lookup)
	ScopeFallback = "fallback" // needed by the iptables fallback; never blocks eBPF
	ScopeVariant  = "variant"  // picks a program variant (ChooseVariant); never blocks eBPF on its own
	ScopeAgent    = "agent"    // needed by agent mode (pods told apart by a netns cookie read from userspace)
)

// FeatureCheck is one probed feature.
type FeatureCheck struct {
	Name   string `json:"name"`   // e.g. "cgroup2", "prog:sock_ops", "attach:connect4", "helper:sk_lookup:sk_assign"
	Scope  string `json:"scope"`  // ScopeCore, ScopeInbound or ScopeFallback
	OK     bool   `json:"ok"`     // feature usable
	Detail string `json:"detail"` // where it was found, or why it is missing
}

// ProbeOptions tunes Probe. The zero value probes the way `meshcap probe` does.
type ProbeOptions struct {
	// CgroupParent is the cgroup v2 directory under which the temporary probe cgroup is made.
	// Empty: the cgroup2 mount point. When no child can be made there, the process's own cgroup is used.
	CgroupParent string
	// BPFFSPath is checked for a bpf filesystem. Empty: /sys/fs/bpf.
	BPFFSPath string
	// Disable lists features to mark missing. Nil: read from MESHCAP_PROBE_DISABLE.
	Disable []string
	// Only, when not nil, runs just the checks named (the others are left out of the result).
	Only []string
}

// ProbeRequirements says which scopes must be complete for eBPF mode.
type ProbeRequirements struct {
	Inbound bool // inbound capture wanted (istio -b non-empty): sk_lookup checks are required too
	Agent   bool // agent mode (one shared attachment, pods keyed by netns cookie): ScopeAgent checks are required too
}

// ModeDecision is the outcome of DecideMode.
type ModeDecision struct {
	Mode    string   `json:"mode"`              // ProbeModeEBPF or ProbeModeIPTables
	Reason  string   `json:"reason"`            // one line, names every missing feature
	Missing []string `json:"missing"`           // names of the required checks that failed
	Variant string   `json:"variant,omitempty"` // eBPF mode: the program variant the loader will load (Variant.String)
}

// DecideMode is the pure decision: eBPF when every required check passed, else iptables naming what is missing.
func DecideMode(checks []FeatureCheck, req ProbeRequirements) ModeDecision {
	var missing, why []string
	for _, c := range checks {
		required := c.Scope == ScopeCore || (c.Scope == ScopeInbound && req.Inbound) || (c.Scope == ScopeAgent && req.Agent)
		if !required || c.OK {
			continue
		}
		missing = append(missing, c.Name)
		why = append(why, fmt.Sprintf("%s (%s)", c.Name, c.Detail))
	}
	if len(missing) == 0 {
		reason := "every feature eBPF capture needs is present"
		if !req.Inbound {
			reason += " (inbound capture not requested)"
		}
		return ModeDecision{Mode: ProbeModeEBPF, Reason: reason, Variant: ChooseVariant(checks).String()}
	}
	reason := "missing: " + strings.Join(why, "; ")
	for _, c := range checks {
		if c.Scope == ScopeFallback && !c.OK {
			reason += "; warning: " + c.Name + ": " + c.Detail
		}
	}
	return ModeDecision{Mode: ProbeModeIPTables, Reason: reason, Missing: missing}
}

// probeItem is one entry of the fixed probe table.
type probeItem struct {
	name  string
	scope string
	run   func(*probeRun) (string, error)
}

func probeItems() []probeItem {
	items := []probeItem{
		{"cgroup2", ScopeCore, (*probeRun).checkCgroup2},
		{"bpffs", ScopeCore, (*probeRun).checkBPFFS},
		// First of the kernel checks: every map after it is made as the loader makes its maps.
		{"bpf_memory", ScopeCore, func(*probeRun) (string, error) {
			if err := allowBPFMemory(); err != nil {
				return "", err
			}
			return "RLIMIT_MEMLOCK lifted where the kernel charges BPF memory to it", nil
		}},
	}
	// Program, map, attach and helper checks: derived from the hook table and the objects (probe_hooks.go).
	items = append(items, hookProbeItems()...)
	items = append(items, netnsCookieProbeItems()...)
	items = append(items, probeItem{"iptables", ScopeFallback, (*probeRun).checkIPTables})
	return items
}

// ProbeFeatureNames lists every check name, in probe order.
func ProbeFeatureNames() []string {
	var names []string
	for _, it := range probeItems() {
		names = append(names, it.name)
	}
	return names
}

// disableMatches reports whether token (from MESHCAP_PROBE_DISABLE) names check: the full name or any
// ':'-separated part of it, so "connect4" disables attach:connect4 and "sk_lookup" every sk_lookup check.
func disableMatches(token, check string) bool {
	return token == check || slices.Contains(strings.Split(check, ":"), token)
}

// ParseProbeDisable splits a MESHCAP_PROBE_DISABLE value and rejects names that match no check.
func ParseProbeDisable(value string) ([]string, error) {
	var out []string
	names := ProbeFeatureNames()
	for _, tok := range strings.Split(value, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		if !slices.ContainsFunc(names, func(n string) bool { return disableMatches(tok, n) }) {
			return nil, fmt.Errorf("invalid %s entry %q: matches no feature (known: %s)", ProbeDisableEnv, tok, strings.Join(names, ", "))
		}
		out = append(out, tok)
	}
	return out, nil
}

// Probe runs every check. Its error is only for bad input (an unknown MESHCAP_PROBE_DISABLE entry);
// a missing feature is a failed check, not an error.
func Probe(opts ProbeOptions) ([]FeatureCheck, error) {
	disable := opts.Disable
	if disable == nil {
		var err error
		if disable, err = ParseProbeDisable(os.Getenv(ProbeDisableEnv)); err != nil {
			return nil, err
		}
	} else if _, err := ParseProbeDisable(strings.Join(disable, ",")); err != nil {
		return nil, err
	}
	r := &probeRun{opts: opts, disable: disable}
	if r.opts.BPFFSPath == "" {
		r.opts.BPFFSPath = DefaultBPFFSPath
	}
	defer r.cleanup()

	var checks []FeatureCheck
	for _, it := range probeItems() {
		if opts.Only != nil && !slices.Contains(opts.Only, it.name) {
			continue
		}
		c := FeatureCheck{Name: it.name, Scope: it.scope}
		if slices.ContainsFunc(disable, func(tok string) bool { return disableMatches(tok, it.name) }) {
			c.Detail = "disabled by " + ProbeDisableEnv
		} else if detail, err := it.run(r); err != nil {
			c.Detail = describeProbeErr(err)
		} else {
			c.OK, c.Detail = true, detail
		}
		checks = append(checks, c)
	}
	return checks, nil
}

func describeProbeErr(err error) string {
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		return "not supported by this kernel: " + err.Error()
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "permission denied (needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN or root): " + err.Error()
	}
	return err.Error()
}

// probeRun carries state shared by the checks of one Probe call.
type probeRun struct {
	opts        ProbeOptions
	cgroup2     string // mount point, once found
	cgroup2Err  error
	cgroupDir   string // where attach checks attach
	cgroupNote  string
	cgroupErr   error
	cgroupReady bool
	removeDir   string // temporary cgroup to remove
	disable     []string
}

func (r *probeRun) cleanup() {
	if r.removeDir != "" {
		removeTempCgroup(r.removeDir)
	}
}

func (r *probeRun) checkCgroup2() (string, error) {
	mnt, hybrid, err := findCgroup2()
	if err != nil && r.opts.CgroupParent != "" && hostfs.IsCgroup2(r.opts.CgroupParent) {
		// This mount namespace hides the cgroup2 mount (ip netns exec), but the target cgroup, seen through the
		// host's mount namespace, is on cgroup2: that is what capture attaches to.
		return "hidden here; target cgroup " + r.opts.CgroupParent + " is on cgroup2", nil
	}
	r.cgroup2, r.cgroup2Err = mnt, err
	if err != nil {
		return "", err
	}
	if hybrid {
		return mnt + " (hybrid layout, cgroup v1 controllers elsewhere)", nil
	}
	return mnt, nil
}

func findCgroup2() (mnt string, hybrid bool, err error) {
	mounts, err := hostfs.Mounts()
	if err != nil {
		return "", false, err
	}
	for _, m := range mounts {
		switch m.FSType {
		case "cgroup":
			hybrid = true
		case "cgroup2":
			if mnt == "" {
				mnt = m.Point
			}
		}
	}
	if mnt == "" {
		return "", false, errors.New("no cgroup2 filesystem in /proc/self/mountinfo")
	}
	return mnt, hybrid, nil
}

func (r *probeRun) checkBPFFS() (string, error) {
	if hostfs.IsBPFFS(r.opts.BPFFSPath) {
		return "mounted at " + r.opts.BPFFSPath, nil
	}
	// Not mounted: usable when the kernel knows the filesystem (meshcap mounts it when it needs pins).
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return "", fmt.Errorf("not mounted at %s and /proc/filesystems unreadable: %w", r.opts.BPFFSPath, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == "bpf" {
			return fmt.Sprintf("not mounted at %s; kernel supports it (mount -t bpf bpf %s)", r.opts.BPFFSPath, r.opts.BPFFSPath), nil
		}
	}
	return "", fmt.Errorf("not mounted at %s and the kernel has no bpf filesystem", r.opts.BPFFSPath)
}

// probeCgroup returns the cgroup the attach checks use: a fresh child of CgroupParent (or of the cgroup2
// mount), or the process's own cgroup when no child can be made there.
func (r *probeRun) probeCgroup() (dir, note string, err error) {
	if r.cgroupReady {
		return r.cgroupDir, r.cgroupNote, r.cgroupErr
	}
	r.cgroupReady = true
	r.cgroupDir, r.cgroupNote, r.cgroupErr = r.makeProbeCgroup()
	return r.cgroupDir, r.cgroupNote, r.cgroupErr
}

func (r *probeRun) makeProbeCgroup() (string, string, error) {
	parent := r.opts.CgroupParent
	if parent == "" {
		if r.cgroup2 == "" {
			if _, err := r.checkCgroup2(); err != nil {
				return "", "", fmt.Errorf("no cgroup2 to attach to: %w", err)
			}
		}
		parent = r.cgroup2
	}
	dir, mkErr := makeTempCgroup(parent, "meshcap-probe")
	if mkErr == nil {
		r.removeDir = dir
		return dir, "temporary cgroup " + dir, nil
	}
	// Read-only cgroupfs (a container): try our own cgroup. A pass-through program there for an instant
	// changes nothing.
	own, err := OwnCgroupDir()
	if err != nil {
		return "", "", fmt.Errorf("probe cgroup under %s: %w; own cgroup: %v", parent, mkErr, err)
	}
	return own, fmt.Sprintf("own cgroup %s (under %s: %v)", own, parent, mkErr), nil
}

// OwnCgroupDir returns the cgroup v2 directory of the calling process (from /proc/self/cgroup) under the
// cgroup2 mount point.
func OwnCgroupDir() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	rel, err := parseCgroupV2Path(string(data))
	if err != nil {
		return "", err
	}
	// Under ip netns exec no cgroup2 mount is visible here: Cgroup2Root falls back to the host's view.
	root, err := hostfs.Cgroup2Root()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, rel), nil
}

// parseCgroupV2Path returns the path of the "0::" line of a /proc/<pid>/cgroup file.
func parseCgroupV2Path(content string) (string, error) {
	for _, line := range strings.Split(content, "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			if rest == "" || !strings.HasPrefix(rest, "/") {
				return "", fmt.Errorf("invalid cgroup v2 path %q in /proc/self/cgroup", rest)
			}
			return filepath.Clean(rest), nil
		}
	}
	return "", errors.New("no cgroup v2 entry (0::) in /proc/self/cgroup")
}

// passProgram loads a program that returns 1 (allow / pass / SK_PASS): attaching it changes nothing.
func passProgram(pt ebpf.ProgramType, at ebpf.AttachType) (*ebpf.Program, error) {
	return ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Name:       "meshcap_probe",
		Type:       pt,
		AttachType: at,
		License:    "Dual MIT/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{LogDisabled: true})
}

// checkCgroupAttach attaches a pass-through program of h's types to the probe cgroup and detaches it.
func (r *probeRun) checkCgroupAttach(h hook) (string, error) {
	dir, note, err := r.probeCgroup()
	if err != nil {
		return "", err
	}
	prog, err := passProgram(h.progType, h.attach)
	if err != nil {
		return "", fmt.Errorf("load %s program: %w", progTypeName(h.progType), err)
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: h.attach, Program: prog})
	if err != nil {
		return "", fmt.Errorf("attach %s to %s: %w", h.attach, dir, err)
	}
	kind := "bpf_link"
	if _, err := l.Info(); errors.Is(err, link.ErrNotSupported) {
		kind = "legacy prog_attach, no bpf_link"
	}
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("detach %s: %w", h.attach, err)
	}
	return fmt.Sprintf("loaded and attached (%s) to %s", kind, note), nil
}

// checkNetnsAttach attaches a pass-through program of h's types (sk_lookup) to a temporary netns.
func (r *probeRun) checkNetnsAttach(h hook) (string, error) {
	prog, err := passProgram(h.progType, h.attach)
	if err != nil {
		return "", fmt.Errorf("load %s program: %w", progTypeName(h.progType), err)
	}
	defer prog.Close()
	ns, where, err := probeNetns()
	if err != nil {
		return "", err
	}
	defer ns.Close()
	l, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		return "", fmt.Errorf("attach %s to %s: %w", progTypeName(h.progType), where, err)
	}
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("detach %s: %w", progTypeName(h.progType), err)
	}
	return "loaded and attached to " + where, nil
}

// checkSockhashAttach attaches a pass-through program of h's types (sk_msg) to a temporary sockhash, which
// takes the program with it when it is freed.
func (r *probeRun) checkSockhashAttach(h hook) (string, error) {
	prog, err := passProgram(h.progType, h.attach)
	if err != nil {
		return "", fmt.Errorf("load %s program: %w", progTypeName(h.progType), err)
	}
	defer prog.Close()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "meshcap_probe", Type: ebpf.SockHash, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return "", fmt.Errorf("create sockhash: %w", err)
	}
	defer m.Close()
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.FD(), Program: prog, Attach: h.attach}); err != nil {
		return "", fmt.Errorf("attach %s to a sockhash: %w", progTypeName(h.progType), err)
	}
	return "loaded and attached to a temporary sockhash", nil
}

// probeNetns returns a fresh, empty network namespace (freed when the file is closed), or the current
// one when this process may not create namespaces. A pass-through sk_lookup program changes nothing.
func probeNetns() (*os.File, string, error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, "", fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		cur, oerr := os.Open("/proc/self/ns/net")
		if oerr != nil {
			return nil, "", fmt.Errorf("open own netns: %w", oerr)
		}
		return cur, fmt.Sprintf("the current netns (cannot create one: %v)", err), nil
	}
	tmp, openErr := os.Open("/proc/thread-self/ns/net")
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread is stuck in the temporary netns: keep it locked so the runtime discards it.
		if tmp != nil {
			tmp.Close()
		}
		return nil, "", fmt.Errorf("return to own netns: %w", err)
	}
	runtime.UnlockOSThread()
	if openErr != nil {
		return nil, "", fmt.Errorf("open temporary netns: %w", openErr)
	}
	return tmp, "a temporary netns", nil
}

func (r *probeRun) checkIPTables() (string, error) {
	var found []string
	for _, bin := range []string{"iptables-legacy", "iptables-nft", "iptables"} {
		if p, err := exec.LookPath(bin); err == nil {
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		return "", errors.New("no iptables, iptables-legacy or iptables-nft in PATH: the fallback cannot run")
	}
	return strings.Join(found, ", "), nil
}
