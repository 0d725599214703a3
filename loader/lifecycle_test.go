package loader

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

// stormOp is one call of a storm, with the real time it ran in.
type stormOp struct {
	pod        int
	attach     bool
	port       uint16 // attach: the proxy port it wrote (unique per op)
	start, end time.Time
	err        error
}

// kernelState is what the kernel and the pins say about one cgroup: how many of its hooks have a program attached,
// whether its pin dir is complete, and the proxy port of its settings (0 when none).
type kernelState struct {
	progs    int
	complete bool
	pinned   bool
	port     uint16
}

func readKernelState(t *testing.T, root, cg string) kernelState {
	t.Helper()
	var ks kernelState
	for _, h := range hooks {
		if n := len(outAttachedProgs(t, cg, h.attach)); n > 1 {
			t.Fatalf("%s: %d programs of %s attached, want at most 1", cg, n, h.name)
		} else {
			ks.progs += n
		}
	}
	dir, err := PinDir(cg, root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err == nil {
		ks.pinned = true
		ks.complete = complete(dir)
		if objs, err := OpenPinned(dir); err == nil {
			var cfg configValue
			if objs.Maps[mapConfig].Lookup(uint64(0), &cfg) == nil {
				ks.port = cfg.ProxyPort
			}
			objs.Close()
		}
	}
	return ks
}

// checkSerial fails unless the kernel's view of pod equals the outcome of an op that may come last in a serial
// order consistent with real time (no op on the pod started after it returned).
func checkSerial(t *testing.T, pod int, ops []stormOp, ks kernelState) {
	t.Helper()
	attached := ks.progs == len(hooks) && ks.complete
	if !attached && (ks.progs != 0 || ks.pinned) {
		t.Fatalf("pod %d: half attached: %d of %d programs, pins present %v complete %v", pod, ks.progs, len(hooks), ks.pinned, ks.complete)
	}
	if !serialOutcome(pod, ops, attached, ks.port) {
		t.Fatalf("pod %d: kernel state %+v is the outcome of no serial order of its calls", pod, ks)
	}
}

// serialOutcome reports whether (captured, port) is the result of an op on pod that may come last in a serial order
// consistent with real time.
func serialOutcome(pod int, ops []stormOp, attached bool, port uint16) bool {
	for _, f := range ops {
		if f.pod != pod {
			continue
		}
		last := true
		for _, o := range ops {
			if o.pod == pod && o.start.After(f.end) {
				last = false
				break
			}
		}
		if last && f.attach == attached && (!attached || f.port == port) {
			return true
		}
	}
	return false
}

// runStorm runs ops from goroutines goroutines (4 each, on random pods of npods) with do, and returns them.
func runStorm(t *testing.T, goroutines, npods int, seed uint64, do func(op stormOp) error) []stormOp {
	t.Helper()
	var (
		mu  sync.Mutex
		ops []stormOp
		wg  sync.WaitGroup
	)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), seed))
			for i := range 4 {
				op := stormOp{pod: r.IntN(npods), attach: r.IntN(3) != 0, port: uint16(20000 + g*10 + i)}
				op.start = time.Now()
				op.err = do(op)
				op.end = time.Now()
				mu.Lock()
				ops = append(ops, op)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, op := range ops {
		if op.err != nil { // Errorf: runStorm may run outside the test goroutine
			t.Errorf("pod %d attach=%v: %v", op.pod, op.attach, op.err)
		}
	}
	return ops
}

// TestEnrollStormSerial: agent mode, enrolls and unenrolls of a few pods (netns cookies) from tens of goroutines,
// at the same time as per-pod attaches and detaches of other cgroups under the same pin root; afterwards every
// pod's settings are the outcome of some serial order of its calls.
func TestEnrollStormSerial(t *testing.T) {
	outRequireRoot(t)
	root := outNewPinRoot(t)
	parent := outNewCgroup(t)
	agent, err := AttachAgent(parent, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cgs := []string{outNewCgroup(t), outNewCgroup(t)}
	base := outPolicy(t, nil)
	cookies := []uint64{7001, 7002, 7003}
	var enrollOps []stormOp
	done := make(chan struct{})
	go func() {
		defer close(done)
		enrollOps = runStorm(t, 16, len(cookies), 13, func(op stormOp) error {
			target := PodTarget{AgentPinDir: agent.PinDir, NetnsCookie: cookies[op.pod]}
			if !op.attach {
				_, err := UncapturePod(target, "")
				return err
			}
			p := base
			p.ProxyPort = op.port
			_, err := CapturePod(target, p, CaptureOptions{})
			return err
		})
	}()
	podOps := runStorm(t, 16, len(cgs), 17, func(op stormOp) error {
		if !op.attach {
			_, err := UncapturePod(PodTarget{Cgroup: cgs[op.pod]}, root)
			return err
		}
		p := base
		p.ProxyPort = op.port
		_, err := CapturePod(PodTarget{Cgroup: cgs[op.pod]}, p, CaptureOptions{PinRoot: root})
		return err
	})
	<-done
	objs, err := OpenPinned(agent.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	for i, c := range cookies {
		var cfg configValue
		enrolled := objs.Maps[mapConfig].Lookup(&c, &cfg) == nil
		if !serialOutcome(i, enrollOps, enrolled, cfg.ProxyPort) {
			t.Errorf("netns %d: enrolled %v port %d is the outcome of no serial order of its calls", c, enrolled, cfg.ProxyPort)
		}
	}
	for i, cg := range cgs {
		checkSerial(t, i, podOps, readKernelState(t, root, cg))
	}
}

// TestCaptureStormSerial: tens of goroutines attach (each with its own proxy port) and detach a few pods at once;
// every call succeeds, and afterwards each pod's kernel state (programs attached to its cgroup, pins, settings) is
// the outcome of some serial order of the calls. Then 16 concurrent attaches of one pod all succeed and leave it
// attached (the "8 concurrent attach, nothing attached").
func TestCaptureStormSerial(t *testing.T) {
	outRequireRoot(t)
	root := outNewPinRoot(t)
	cgs := []string{outNewCgroup(t), outNewCgroup(t), outNewCgroup(t)}
	base := outPolicy(t, nil)
	ops := runStorm(t, 32, len(cgs), 11, func(op stormOp) error {
		if !op.attach {
			_, err := UncapturePod(PodTarget{Cgroup: cgs[op.pod]}, root)
			return err
		}
		p := base
		p.ProxyPort = op.port
		_, err := CapturePod(PodTarget{Cgroup: cgs[op.pod]}, p, CaptureOptions{PinRoot: root})
		return err
	})
	for i, cg := range cgs {
		checkSerial(t, i, ops, readKernelState(t, root, cg))
	}

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := base
			p.ProxyPort = uint16(30000 + i)
			_, err := CapturePod(PodTarget{Cgroup: cgs[0]}, p, CaptureOptions{PinRoot: root})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if ks := readKernelState(t, root, cgs[0]); ks.progs != len(hooks) || !ks.complete || ks.port < 30000 || ks.port >= 30016 {
		t.Fatalf("after 16 concurrent attaches: %+v; want attached with one of their settings", ks)
	}
}

// TestForeignPinRootRefused: a pin root owned by another user, or writable by others, is refused with an error
// naming it, and nothing is pinned into it.
func TestForeignPinRootRefused(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	for _, tc := range []struct {
		name       string
		uid        int
		mode       os.FileMode
		wantInText string
	}{
		{"other owner", 65534, 0o700, "owned by uid 65534"},
		{"world writable", 0, 0o1777, "writable by group or others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := outNewPinRoot(t)
			if err := os.Mkdir(root, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(root, tc.mode); err != nil { // past the umask
				t.Fatal(err)
			}
			if err := os.Chown(root, tc.uid, tc.uid); err != nil {
				t.Fatal(err)
			}
			_, err := CapturePod(PodTarget{Cgroup: cg}, outPolicy(t, nil), CaptureOptions{PinRoot: root})
			if err == nil || !containsAll(err.Error(), root, tc.wantInText) {
				t.Fatalf("CapturePod into %s = %v; want a refusal naming it (%q)", root, err, tc.wantInText)
			}
			if entries, _ := os.ReadDir(root); len(entries) != 0 {
				t.Errorf("%d entries pinned into the refused pin root", len(entries))
			}
			for _, h := range hooks {
				if ids := outAttachedProgs(t, cg, h.attach); len(ids) != 0 {
					t.Errorf("%s attached to the cgroup despite the refusal", h.name)
				}
			}
			if _, err := GetStatus(root); err == nil {
				t.Error("status read a foreign pin root")
			}
			_ = os.Chown(root, 0, 0) // let Cleanup detach (nothing) and unmount
		})
	}
}

// TestDetachMissingCgroupKeepsOthers: detaching a cgroup path that does not exist detaches nothing (no other pod
// loses capture), and the live pods stay attached.
func TestDetachMissingCgroupKeepsOthers(t *testing.T) {
	outRequireRoot(t)
	root := outNewPinRoot(t)
	a, b := outNewCgroup(t), outNewCgroup(t)
	for _, cg := range []string{a, b} {
		if _, err := CapturePod(PodTarget{Cgroup: cg}, outPolicy(t, nil), CaptureOptions{PinRoot: root}); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(filepath.Dir(a), "meshcap-no-such-cgroup-"+outSuffix())
	res, err := UncapturePod(PodTarget{Cgroup: missing}, root)
	if err != nil || res.Outbound {
		t.Fatalf("UncapturePod(missing) = %+v, %v; want nothing detached", res, err)
	}
	for _, cg := range []string{a, b} {
		if ks := readKernelState(t, root, cg); ks.progs != len(hooks) || !ks.complete {
			t.Errorf("%s after detaching a missing cgroup: %+v; want still attached", cg, ks)
		}
	}
	// The kernel's proof: an existing cgroup id is never "gone".
	id, err := hostfs.CgroupID(a)
	if err != nil {
		t.Fatal(err)
	}
	if gone, err := hostfs.CgroupGone(id); gone || err != nil {
		t.Errorf("CgroupGone(live %d) = %v, %v", id, gone, err)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
