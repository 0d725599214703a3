package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// cgroupPathByID finds the directory of cgroup id under the cgroup2 root ("" if it no longer exists).
func cgroupPathByID(id uint64) string {
	root, err := podnet.Cgroup2Root()
	if err != nil {
		return ""
	}
	found := ""
	errStop := errors.New("stop")
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && st.Ino == id {
			found = path
			return errStop
		}
		return nil
	})
	return found
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
