package hostfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// BPFFSMount is where bpffs is mounted on every distribution meshcap knows.
const BPFFSMount = "/sys/fs/bpf"

// PrivateMountNS reports whether this process is provably in another mount namespace than PID 1. When
// /proc/1/ns/mnt cannot be read (a sandbox, a container's pid namespace without access) nothing is proven: false.
func PrivateMountNS() bool {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	init, err2 := os.Readlink("/proc/1/ns/mnt")
	return err1 == nil && err2 == nil && self != init
}

// EnsureBPFFS mounts a bpf filesystem at /sys/fs/bpf when pinRoot lies under it and none is mounted there, as users
// expect from a root CLI (systemd normally mounts it). mounted reports that it did.
//
// Capture pinned in a bpffs that only a private mount namespace sees would vanish with that namespace, silently
// detaching it; so when this process is provably in another mount namespace than the host's (`ip netns exec`),
// it refuses unless throwaway is set (the demo and the benchmark, whose pins live no longer than they do). Not
// being able to read /proc/1/ns/mnt is no such proof: the mount then goes ahead.
func EnsureBPFFS(pinRoot string, throwaway bool) (mounted bool, err error) {
	clean := filepath.Clean(pinRoot)
	if clean != BPFFSMount && !strings.HasPrefix(clean, BPFFSMount+"/") {
		return false, nil
	}
	if IsBPFFS(BPFFSMount) {
		return false, nil
	}
	if _, err := os.Stat(BPFFSMount); err != nil {
		return false, fmt.Errorf("no bpf filesystem at %s: %w", BPFFSMount, err)
	}
	if !throwaway && PrivateMountNS() {
		return false, fmt.Errorf("no bpf filesystem at %s, and this process is in a private mount namespace, where pins would vanish with it (mount -t bpf bpf %s on the host, or bind it in)", BPFFSMount, BPFFSMount)
	}
	if err := unix.Mount("bpf", BPFFSMount, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount bpffs at %s: %w", BPFFSMount, err)
	}
	return true, nil
}
