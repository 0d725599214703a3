package loader

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDetachRefusesNonBPFFS: detach removes what it finds under the pin root, so a pin root that is not on bpffs
// must be refused before anything is touched (a plain directory's files must survive).
func TestDetachRefusesNonBPFFS(t *testing.T) {
	outRequireRoot(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "cgroup-12345", "todo.txt")
	if err := os.MkdirAll(filepath.Dir(victim), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := DetachAll(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("DetachAll(%s) = %v, want an error naming the non-bpffs dir", dir, err)
	}
	if _, err := Detach(outNewCgroup(t), dir); err == nil {
		t.Errorf("Detach with non-bpffs pin dir %s: want an error", dir)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("detach deleted a file outside bpffs: %v", err)
	}
	// A pin root that does not exist means nothing is attached: fine, and nothing is created.
	missing := filepath.Join(dir, "absent")
	if removed, err := DetachAll(missing); err != nil || len(removed) != 0 {
		t.Errorf("DetachAll(missing) = %v, %v; want nothing, no error", removed, err)
	}
}

// TestDetachRemovedCgroup: a cgroup removed while attached cannot be named by inode any more; detaching it by path
// removes the attachments whose cgroup is gone and leaves live ones alone.
func TestDetachRemovedCgroup(t *testing.T) {
	outRequireRoot(t)
	gone, live := outNewCgroup(t), outNewCgroup(t)
	root := outNewPinRoot(t)
	for _, cg := range []string{gone, live} {
		if _, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(gone); err != nil {
		t.Fatalf("remove cgroup: %v", err)
	}
	// A path that does not exist names nothing: Detach cannot tell which attachment it was, so it removes none.
	attached, err := Detach(gone, root)
	if err != nil || attached {
		t.Fatalf("Detach(removed cgroup) = %v, %v; want nothing detached", attached, err)
	}
	if st, err := GetStatus(root); err != nil || len(st.Attachments) != 2 {
		t.Fatalf("after Detach(removed cgroup): %v attachments, %v; want both pins kept", st, err)
	}
	// The kernel's word that the cgroup id is gone is proof: PruneGone removes that one, never the live one.
	pruned, err := PruneGone(root)
	if err != nil || len(pruned) != 1 {
		t.Fatalf("PruneGone = %v, %v; want the removed cgroup's pins", pruned, err)
	}
	st, err := GetStatus(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Attachments) != 1 {
		t.Fatalf("want only the live attachment left, got %+v", st.Attachments)
	}
	attached, err = Detach(gone, root)
	if err != nil || attached {
		t.Errorf("second Detach(removed cgroup) = %v, %v; want nothing to do", attached, err)
	}
	if _, err := Detach(live, root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin root left after the last detach: %v", err)
	}
}
