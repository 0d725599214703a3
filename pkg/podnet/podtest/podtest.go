// Package podtest holds the test helpers for packages whose tests build real pods (netns + cgroup): the root
// requirement and throwaway pods. Only tests import it.
//
// Invariants: every pod it makes has a random name with the caller's prefix and is removed when the test ends,
// also on failure; without root a test is skipped, except under CI=true, where a skip would hide a missing check.
package podtest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// RequireRoot skips t without root (what names what the test does as root), and fails it under CI=true.
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("needs root (%s) and CI runs as root: refusing to skip", what)
	}
	t.Skipf("needs root: %s", what)
}

// NewPod makes a pod named <prefix>-<6 random hex>-<role>, removed when the test ends.
func NewPod(t testing.TB, prefix, role string) *podnet.Pod {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	p, err := podnet.NewPod(prefix + "-" + hex.EncodeToString(b) + "-" + role)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("remove %s: %v", p.Name, err)
		}
	})
	return p
}
