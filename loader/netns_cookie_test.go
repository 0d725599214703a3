package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/pkg/podnet/podtest"
)

// openNetns opens a netns file for the test.
func openNetns(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// readerCgroups lists the reader's private cgroups of this process left under the cgroup2 root.
func readerCgroups(t *testing.T) []string {
	t.Helper()
	root, err := hostfs.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	left, err := filepath.Glob(filepath.Join(root, fmt.Sprintf("meshcap-netns-cookie-%d-*", os.Getpid())))
	if err != nil {
		t.Fatal(err)
	}
	return left
}

// TestNetnsCookieReader forces the cgroup/sock_create reader (the way of kernels before 5.14) on real netns: it
// gives each netns the cookie SO_NETNS_COOKIE gives (where the kernel has it), the same value on every read, two
// netns two values, and it leaves no cgroup behind.
func TestNetnsCookieReader(t *testing.T) {
	podtest.RequireRoot(t, "creates netns and cgroups, loads BPF")
	a, b := podtest.NewPod(t, "mcnc", "a"), podtest.NewPod(t, "mcnc", "b")
	nsA, nsB := openNetns(t, a.NetnsPath), openNetns(t, b.NetnsPath)
	read := func(ns *os.File) uint64 {
		t.Helper()
		c, err := readNetnsCookie(ns)
		if err != nil {
			t.Fatal(err)
		}
		if !hostfs.IsNetnsCookie(c) {
			t.Fatalf("reader gave %#x: not a cookie", c)
		}
		return c
	}
	cA, cB := read(nsA), read(nsB)
	if cA == cB {
		t.Fatalf("two netns, one cookie %d", cA)
	}
	if again := read(nsA); again != cA {
		t.Errorf("second read of netns a: %d, first %d", again, cA)
	}
	for name, c := range map[*os.File]uint64{nsA: cA, nsB: cB} {
		sock, err := hostfs.NetnsCookie(name)
		switch {
		case errors.Is(err, unix.ENOPROTOOPT):
			t.Logf("no SO_NETNS_COOKIE on this kernel: reader only (%d)", c)
		case err != nil:
			t.Fatal(err)
		case sock != c:
			t.Errorf("reader %d, SO_NETNS_COOKIE %d for the same netns", c, sock)
		}
	}
	if left := readerCgroups(t); len(left) != 0 {
		t.Errorf("reader cgroups left behind: %v", left)
	}
}

// TestNetnsCookieWays: MESHCAP_PROBE_DISABLE picks the way every caller takes. so_netns_cookie sends NetnsID and
// SocketNetnsID to the reader (same cookies); userspace:netns_cookie leaves no way: NetnsCookie fails with
// ErrNoNetnsCookie and NetnsID names the netns by its marked inode. The probe says which way it found.
func TestNetnsCookieWays(t *testing.T) {
	podtest.RequireRoot(t, "creates netns and cgroups, loads BPF")
	pod := podtest.NewPod(t, "mcnc", "w")
	ns := openNetns(t, pod.NetnsPath)
	want, err := readNetnsCookie(ns)
	if err != nil {
		t.Fatal(err)
	}

	t.Setenv(ProbeDisableEnv, "so_netns_cookie")
	if got, err := NetnsID(ns); err != nil || got != want {
		t.Errorf("NetnsID by the reader: %d (%v), want %d", got, err, want)
	}
	var sockID uint64
	err = pod.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sockID, err = SocketNetnsID(fd)
		return err
	})
	if err != nil || sockID != want {
		t.Errorf("SocketNetnsID by the reader: %d (%v), want %d", sockID, err, want)
	}
	checks, err := Probe(ProbeOptions{Only: []string{CheckSockoptNetnsCookie, CheckUserspaceNetnsCookie}})
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 2 || checks[0].OK || !checks[1].OK || !strings.Contains(checks[1].Detail, "sock_create") {
		t.Errorf("probe with SO_NETNS_COOKIE disabled: %+v, want the userspace check ok by the reader", checks)
	}
	if d := DecideMode(checks, ProbeRequirements{Agent: true}); d.Mode != ProbeModeEBPF {
		t.Errorf("agent mode with the reader: %+v", d)
	}

	t.Setenv(ProbeDisableEnv, CheckUserspaceNetnsCookie)
	if c, err := NetnsCookie(ns); !errors.Is(err, ErrNoNetnsCookie) {
		t.Errorf("NetnsCookie with no way: %d, %v; want ErrNoNetnsCookie", c, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if id, err := NetnsID(ns); err != nil || hostfs.IsNetnsCookie(id) || id&^(1<<63) != st.Ino {
		t.Errorf("NetnsID with no way: %#x (%v), want the marked inode %d", id, err, st.Ino)
	}
	checks, err = Probe(ProbeOptions{Only: []string{CheckUserspaceNetnsCookie}})
	if err != nil {
		t.Fatal(err)
	}
	if d := DecideMode(checks, ProbeRequirements{Agent: true}); d.Mode != ProbeModeIPTables || !strings.Contains(d.Reason, CheckUserspaceNetnsCookie) {
		t.Errorf("agent mode with no way: %+v, want iptables naming %s", d, CheckUserspaceNetnsCookie)
	}
}
