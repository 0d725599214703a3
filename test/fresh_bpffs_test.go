package test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDemoAndBenchWithoutBPFFS: on a machine where no bpffs is mounted (simulated in a private mount namespace, never
// on the host's), `meshcap demo` and the bench smoke test with an eBPF scenario work: they mount a bpf filesystem
// themselves. The host's /sys/fs/bpf is untouched.
func TestDemoAndBenchWithoutBPFFS(t *testing.T) {
	requireRoot(t)
	var before unix.Statfs_t
	hostHad := unix.Statfs("/sys/fs/bpf", &before) == nil && before.Type == unix.BPF_FS_MAGIC
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	script := `set -e
while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done
if mountpoint -q /sys/fs/bpf; then echo "bpffs still mounted" >&2; exit 9; fi
"$MESHCAP" demo --requests 1
"$MESHCAP" bench --quick --scenarios ebpf --rounds 1 --duration 200ms --warmup 50ms --pod-prefix "$PREFIX" --json`
	cmd := exec.CommandContext(ctx, "unshare", "-m", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(cmd.Environ(), "MESHCAP="+meshcapBin, "PREFIX=mcf"+randHex(2))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo and bench without bpffs: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"mounted a bpf filesystem", "CAPTURED", `"scenario":"ebpf"`} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	var after unix.Statfs_t
	if hostHad && (unix.Statfs("/sys/fs/bpf", &after) != nil || after.Type != unix.BPF_FS_MAGIC) {
		t.Fatal("the host's /sys/fs/bpf is no longer bpffs")
	}
}
