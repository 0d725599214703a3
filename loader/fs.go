package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/meshcap/meshcap/pkg/podnet"
	"golang.org/x/sys/unix"
)

// DefaultPinRoot is where attachments are pinned unless told otherwise.
const DefaultPinRoot = "/sys/fs/bpf/meshcap"

// cgroupID checks that dir is a cgroup v2 directory and returns its id (its inode number).
func cgroupID(dir string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %q: %w", dir, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %q is not on a cgroup2 filesystem (filesystem magic %#x, want cgroup2 %#x)",
			dir, fs.Type, unix.CGROUP2_SUPER_MAGIC)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("cgroup %q: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("cgroup %q is not a directory", dir)
	}
	return st.Ino, nil
}

// checkPinRoot makes sure root is (or can be made) a directory on a bpf filesystem.
func checkPinRoot(root string) error {
	if root == "" {
		return errors.New("empty pin dir")
	}
	// The nearest existing ancestor decides which filesystem the directory lands on.
	probe := root
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(probe, &fs); err != nil {
		return fmt.Errorf("pin dir %q: %w", root, err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %q is not on a bpf filesystem (%q has magic %#x; mount one with `mount -t bpf bpf /sys/fs/bpf`)",
			root, probe, fs.Type)
	}
	return nil
}

func pinDirFor(root string, id uint64) string {
	return filepath.Join(root, fmt.Sprintf("cgroup-%d", id))
}

func linkPin(dir, hook string) string { return filepath.Join(dir, "link_"+hook) }
func mapPin(dir, name string) string  { return filepath.Join(dir, name) }

var kernelCheck struct {
	once sync.Once
	err  error
}

// checkKernel reports a precise error when the kernel lacks a program type the hooks need.
func checkKernel() error {
	kernelCheck.once.Do(func() {
		for _, h := range hooks {
			if err := features.HaveProgramType(h.progType); err != nil {
				kernelCheck.err = fmt.Errorf("kernel does not support BPF program type %s (needed for %s): %w", h.progType, h.name, err)
				return
			}
		}
		if err := features.HaveMapType(ebpf.LRUHash); err != nil {
			kernelCheck.err = fmt.Errorf("kernel does not support BPF map type %s: %w", ebpf.LRUHash, err)
		}
	})
	return kernelCheck.err
}

// cgroup2Root is the cgroup2 mount point as this process can reach it: its own mount, else the host's through
// HostView (ip netns exec hides /sys/fs/cgroup).
func cgroup2Root() (string, error) {
	if root, err := podnet.Cgroup2Root(); err == nil {
		return root, nil
	}
	for _, mnt := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if v, ok := HostView(mnt, unix.CGROUP2_SUPER_MAGIC); ok {
			return v, nil
		}
	}
	return "", errors.New("no cgroup2 filesystem mounted (nor visible through the host's mount namespace)")
}

// cgroupPathByID finds the directory of cgroup id under the cgroup2 root. gone is true only when the tree was
// searched and the cgroup is not in it; when the tree cannot be searched, path is "" and gone is false.
func cgroupPathByID(id uint64) (path string, gone bool) {
	root, err := cgroup2Root()
	if err != nil {
		return "", false
	}
	errStop := errors.New("stop")
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Ino == id {
			path = p
			return errStop
		}
		return nil
	})
	return path, path == ""
}

// lockDir takes an exclusive flock on a pin directory and returns its release. meshcap-cni processes (one per pod),
// the agent and the CLI write into the same pinned maps; the lock keeps each attach, detach or pod update whole.
func lockDir(dir string) (func(), error) {
	fd, err := unix.Open(filepath.Clean(dir), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, &os.PathError{Op: "open", Path: dir, Err: err})
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}

// HostView returns path as the host's mount namespace sees it when this process runs in a private mount namespace
// that hides it: `ip netns exec` remounts /sys, which hides /sys/fs/bpf and /sys/fs/cgroup, and pins made in a
// bpffs of that namespace alone would vanish with it. The host's tree is reached through the root of PID 1 or, where
// that is refused, of the nearest ancestor process in another mount namespace (the shell that ran `ip netns exec`);
// that root is opened once and kept, so the view stays valid if the ancestor exits. magic is the filesystem path
// must be on (unix.BPF_FS_MAGIC or unix.CGROUP2_SUPER_MAGIC). When path is fine as it is, or no host view of it is
// on that filesystem either, path is returned unchanged and the caller's usual checks report the problem.
func HostView(path string, magic int64) (view string, switched bool) {
	if path == "" || !filepath.IsAbs(path) || onFS(path, magic) {
		return path, false
	}
	for _, root := range hostRoots() {
		if alt := filepath.Join(root, path); onFS(alt, magic) {
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
// namespace than this process (empty when this process shares PID 1's mount namespace).
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

// onFS reports whether path, or its nearest existing ancestor when it does not exist yet, is on a filesystem of
// type magic.
func onFS(path string, magic int64) bool {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return int64(st.Type) == magic
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" || p == "." {
			return false
		}
	}
}

// OnBPFFS reports whether path (or its nearest existing ancestor) is on a bpf filesystem.
func OnBPFFS(path string) bool { return onFS(path, unix.BPF_FS_MAGIC) }
