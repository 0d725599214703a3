package hostfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Cgroup2Root is the cgroup2 mount point as this process can reach it: its own mount, else the host's through
// HostView (ip netns exec hides /sys/fs/cgroup).
func Cgroup2Root() (string, error) {
	if root, err := Cgroup2Mount(); err == nil {
		return root, nil
	}
	for _, mnt := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		// The candidate itself must be cgroup2, not merely lie below a cgroup2 mount: on a pure v2 host the
		// nonexistent .../cgroup/unified would otherwise pass as the root.
		if v, ok := HostView(mnt, unix.CGROUP2_SUPER_MAGIC); ok && existsOnFS(v, unix.CGROUP2_SUPER_MAGIC) {
			return v, nil
		}
	}
	return "", errors.New("no cgroup2 filesystem mounted (nor visible through the host's mount namespace)")
}

// existsOnFS reports whether path itself exists on a filesystem with this magic.
func existsOnFS(path string, magic int64) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && int64(st.Type) == magic
}

// CgroupID checks that dir is a cgroup v2 directory and returns its id (its inode number, what the kernel and
// bpf_link info call the cgroup id).
func CgroupID(dir string) (uint64, error) {
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

// fileIDKernfs is FILEID_KERNFS (include/linux/exportfs.h): cgroupfs file handles are the 64-bit cgroup id.
const fileIDKernfs = 0xfe

// CgroupGone reports whether the kernel says that no cgroup with this id exists any more: open_by_handle_at on
// the cgroup2 mount answers ESTALE for a removed cgroup. Any other outcome (the cgroup opens, no cgroup2 mount can
// be reached, no CAP_DAC_READ_SEARCH, a cgroup namespace that hides it) is no proof: gone is false, and err says
// why nothing could be proven.
func CgroupGone(id uint64) (gone bool, err error) {
	root, err := Cgroup2Root()
	if err != nil {
		return false, err
	}
	mfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open cgroup2 root %s: %w", root, err)
	}
	defer unix.Close(mfd)
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], id)
	fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(fileIDKernfs, b[:]), unix.O_RDONLY|unix.O_CLOEXEC)
	switch {
	case err == nil:
		unix.Close(fd)
		return false, nil
	case errors.Is(err, unix.ESTALE):
		return true, nil
	default:
		return false, fmt.Errorf("open cgroup id %d: %w", id, err)
	}
}

// CgroupPathByID finds the directory of cgroup id under the cgroup2 root, "" when it is not found there (which
// alone does not mean the cgroup is gone: see CgroupGone).
func CgroupPathByID(id uint64) string {
	root, err := Cgroup2Root()
	if err != nil {
		return ""
	}
	var path string
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
	return path
}
