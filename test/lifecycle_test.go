package test

// Issue 11 through the CLI: concurrent attaches of one pod, and detaches of a cgroup that does not exist (from the
// host and from inside a cgroup namespace), never leave a pod uncaptured.

import (
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/meshcap/meshcap/loader"
)

// ebAttachedHooks is the number of programs of the attachment of cgroup id that the kernel reports attached to it.
func ebAttachedHooks(st loader.Status, cgroupID uint64) int {
	n := 0
	for _, a := range st.Attachments {
		if a.CgroupID != cgroupID {
			continue
		}
		for _, p := range a.Programs {
			if p.Err == "" && p.CgroupID == cgroupID {
				n++
			}
		}
	}
	return n
}

// TestCLIConcurrentAttachAndMissingDetach: 8 concurrent `meshcap ebpf attach --cgroup X` all succeed and X ends
// attached (every program linked to X in the kernel); then `meshcap ebpf detach --cgroup <missing>`, run on the
// host and under `unshare -C` (a cgroup namespace), detaches nothing: both pods stay attached.
func TestCLIConcurrentAttachAndMissingDetach(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	a, b := newPod(t, "lca"), newPod(t, "lcb")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	outs := make([]string, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = runMeshcap(t, "ebpf", "attach", "--pin-dir", pin, "--cgroup", a.CgroupDir, "-i", "*", "-p", itoa(15001+i))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent attach %d: %v\n%s", i, err, outs[i])
		}
	}
	ebAttach(t, pin, b, "-i", "*")
	st := ebStatus(t, pin)
	if len(st.Attachments) != 2 {
		t.Fatalf("status after the attaches: %d attachments, want 2", len(st.Attachments))
	}
	ids := map[string]uint64{}
	for _, at := range st.Attachments {
		ids[at.CgroupPath] = at.CgroupID
		if n := ebAttachedHooks(st, at.CgroupID); n != len(at.Programs) || n == 0 {
			t.Fatalf("cgroup %s: %d of %d programs attached", at.CgroupPath, n, len(at.Programs))
		}
	}
	missing := filepath.Join(filepath.Dir(a.CgroupDir), "meshcap-missing-"+randHex(4))
	for _, cmd := range [][]string{
		{meshcapBin, "ebpf", "detach", "--pin-dir", pin, "--cgroup", missing},
		{"unshare", "-C", meshcapBin, "ebpf", "detach", "--pin-dir", pin, "--cgroup", missing},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
		st := ebStatus(t, pin)
		for _, pod := range []string{a.CgroupDir, b.CgroupDir} {
			id, ok := ids[pod]
			if !ok {
				t.Fatalf("no attachment recorded for %s", pod)
			}
			if n := ebAttachedHooks(st, id); n == 0 || len(st.Attachments) != 2 {
				t.Errorf("after %v: %s has %d programs attached, %d attachments; want it still captured", cmd, pod, n, len(st.Attachments))
			}
		}
	}
}
