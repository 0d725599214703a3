package cni

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/hostfs"
)

// ErrNetnsGone means the network namespace path does not exist (any more).
var ErrNetnsGone = errors.New("network namespace gone")

// NetnsID identifies a network namespace: its cookie (what BPF programs see through bpf_get_netns_cookie)
// and its inode (what /proc/<pid>/ns/net shows).
type NetnsID struct {
	Cookie uint64
	Inode  uint64
}

// ReadNetnsID opens the netns at path and reads its cookie (loader.NetnsID; where this process can read no cookie,
// a stand-in that is no cookie, and captureMode then falls back to iptables).
func ReadNetnsID(path string) (NetnsID, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return NetnsID{}, fmt.Errorf("open netns %q: %w", path, ErrNetnsGone)
	}
	if err != nil {
		return NetnsID{}, fmt.Errorf("open netns %q: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return NetnsID{}, fmt.Errorf("stat netns %q: %w", path, err)
	}
	var nsfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &nsfs); err != nil || uint32(nsfs.Type) != uint32(unix.NSFS_MAGIC) {
		return NetnsID{}, fmt.Errorf("netns %q: not a namespace file", path)
	}

	cookie, err := loader.NetnsID(f) // a cookie, or a stand-in that captureMode sends to iptables
	if err != nil {
		return NetnsID{}, fmt.Errorf("netns %q: %w", path, err)
	}
	return NetnsID{Cookie: cookie, Inode: st.Ino}, nil
}

// Same reports whether id, read now, names the netns an enrollment recorded (its cookie and inode). Cookies are
// compared where both are cookies. Where one side is only a stand-in (read by a process that reads no netns cookie,
// loader.NetnsID), only a different inode proves another netns; known is false when nothing can be told.
func (id NetnsID) Same(cookie, inode uint64) (same, known bool) {
	if hostfs.IsNetnsCookie(id.Cookie) == hostfs.IsNetnsCookie(cookie) {
		return id.Cookie == cookie, true
	}
	if inode != 0 && id.Inode != inode {
		return false, true
	}
	return false, false
}
