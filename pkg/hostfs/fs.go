package hostfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// IsBPFFS reports whether path itself is on a bpf filesystem.
func IsBPFFS(path string) bool { return isFS(path, unix.BPF_FS_MAGIC) }

// IsCgroup2 reports whether dir is on a cgroup2 filesystem.
func IsCgroup2(dir string) bool { return isFS(dir, unix.CGROUP2_SUPER_MAGIC) }

func isFS(path string, magic int64) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && int64(st.Type) == magic
}

// OnBPFFS reports whether path, or its nearest existing ancestor when it does not exist yet, is on a bpf
// filesystem: where a pin directory created at path would land.
func OnBPFFS(path string) bool { return OnFS(path, unix.BPF_FS_MAGIC) }

// OnFS reports whether path, or its nearest existing ancestor when it does not exist yet, is on a filesystem of
// type magic.
func OnFS(path string, magic int64) bool {
	_, ok := nearestOnFS(path, magic)
	return ok
}

// nearestOnFS returns the nearest existing ancestor of path (path itself included) and whether it is on magic.
func nearestOnFS(path string, magic int64) (string, bool) {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return p, int64(st.Type) == magic
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" || p == "." {
			return p, false
		}
	}
}

// RequireBPFFS returns an error naming path when a directory made at path would not be on a bpf filesystem.
func RequireBPFFS(path string) error {
	if path == "" {
		return errors.New("empty pin dir")
	}
	probe, ok := nearestOnFS(path, unix.BPF_FS_MAGIC)
	if !ok {
		return fmt.Errorf("pin dir %q is not on a bpf filesystem (%q is not bpffs; mount one with `mount -t bpf bpf /sys/fs/bpf`)", path, probe)
	}
	return nil
}

// HostView returns path as the host's mount namespace sees it when this process runs in a private mount namespace
// that hides it: `ip netns exec` remounts /sys, which hides /sys/fs/bpf and /sys/fs/cgroup, and pins made in a
// bpffs of that namespace alone would vanish with it. The host's tree is reached through the root of PID 1 or, where
// that is refused, of the nearest ancestor process in another mount namespace (the shell that ran `ip netns exec`);
// that root is opened once and kept, so the view stays valid if the ancestor exits. magic is the filesystem path
// must be on (unix.BPF_FS_MAGIC or unix.CGROUP2_SUPER_MAGIC). When path is fine as it is, or no host view of it is
// on that filesystem either, path is returned unchanged and the caller's usual checks report the problem.
func HostView(path string, magic int64) (view string, switched bool) {
	if path == "" || !filepath.IsAbs(path) || OnFS(path, magic) {
		return path, false
	}
	for _, root := range hostRoots() {
		if alt := filepath.Join(root, path); OnFS(alt, magic) {
			return alt, true
		}
	}
	return path, false
}

var (
	hostRootsOnce sync.Once
	hostRootDirs  []string
)

// hostRoots lists /proc/self/fd/N paths of the roots of PID 1 and of the ancestors that are in another mount
// namespace than this process (empty when this process shares PID 1's mount namespace, or cannot read it).
func hostRoots() []string {
	hostRootsOnce.Do(func() {
		own, err := os.Readlink("/proc/self/ns/mnt")
		if err != nil {
			return
		}
		pids := []int{1}
		for pid := os.Getppid(); pid > 1 && len(pids) < 16; pid = parentPID(pid) {
			pids = append(pids, pid)
		}
		for _, pid := range pids {
			ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
			if err != nil || ns == own {
				continue
			}
			fd, err := unix.Open(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			hostRootDirs = append(hostRootDirs, fmt.Sprintf("/proc/self/fd/%d", fd))
		}
	})
	return hostRootDirs
}

func parentPID(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses, so parse after the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
