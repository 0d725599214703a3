package loader

// The pin layout, and its one owner: every pin path, the listing of what is pinned, the pin root's checks and
// lock, and the settings swap of a re-attach are here; no other file spells a pin path.
//
//   <pin root>/                               root-owned, not writable by group or others (checkPinRoot)
//     cgroup-<cgroup id>/                     one outbound attachment (per-pod mode: one pod; agent mode: the root)
//       link_<hook>                           bpf_links of the cgroup programs (hook names: hooks.go)
//       mc_<map>                              its maps; mc_<settings map>_new during a settings swap
//     netns-<netns cookie>/inbound/           one pod's inbound attachment (sk_lookup): link, config, ports,
//                                             listener, stats, steered, exempt_bound, and the links of its
//                                             cgroup programs cg_post_bind4/6, cg_sockops, cg_getsockopt
//
// Locking: every change of capture (attach, detach, enroll, unenroll, inbound attach/detach through CapturePod)
// holds the pin root's exclusive flock for its whole sequence (lockRoot), so concurrent callers, in one process
// or many, end in a state equal to some serial order of their calls.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

// DefaultPinRoot is where attachments are pinned unless told otherwise.
const DefaultPinRoot = "/sys/fs/bpf/meshcap"

const (
	outboundPrefix = "cgroup-"
	inboundPrefix  = "netns-"
	swapSuffix     = "_new" // settings maps of a re-attach, renamed over the old ones once the programs use them (bpffs refuses "." in names)
)

// Pin names inside <pin root>/netns-<cookie>/inbound/.
const (
	inbPinLink     = "link"
	inbPinConfig   = "config"
	inbPinPorts    = "ports"
	inbPinListener = "listener"
	inbPinStats    = "stats"
	inbPinSteered  = "steered"
	inbPinSteered6 = "steered6"
	inbPinExempt   = "exempt_bound"
	inbPinNewSufx  = swapSuffix
)

func rootOrDefault(root string) string {
	if root == "" {
		return DefaultPinRoot
	}
	return root
}

func pinDirFor(root string, id uint64) string {
	return filepath.Join(root, fmt.Sprintf("%s%d", outboundPrefix, id))
}

func linkPin(dir, hook string) string { return filepath.Join(dir, "link_"+hook) }

// inbCgroupPin is the pin name of an inbound cgroup hook's link (cg_<hook>), next to the sk_lookup link.
func inbCgroupPin(h hook) string     { return "cg_" + h.name }
func mapPin(dir, name string) string { return filepath.Join(dir, name) }
func inbPin(dir, name string) string { return filepath.Join(dir, name) }

// InboundPinDir is where the inbound attachment of the netns with this cookie is pinned.
func InboundPinDir(pinRoot string, netnsCookie uint64) string {
	return filepath.Join(rootOrDefault(pinRoot), fmt.Sprintf("%s%d", inboundPrefix, netnsCookie), "inbound")
}

// outboundIDs lists the cgroup ids that have an outbound pin directory under root (sorted).
func outboundIDs(root string) ([]uint64, error) { return pinnedIDs(root, outboundPrefix) }

// inboundCookies lists the netns cookies that have an inbound pin directory under pinRoot (sorted).
func inboundCookies(pinRoot string) ([]uint64, error) {
	pinRoot = rootOrDefault(pinRoot)
	all, err := pinnedIDs(pinRoot, inboundPrefix)
	return slices.DeleteFunc(all, func(c uint64) bool {
		_, serr := os.Stat(InboundPinDir(pinRoot, c))
		return serr != nil
	}), err
}

// pinnedIDs lists the numbers N of the directories <prefix>N under root (sorted); none when root does not exist.
func pinnedIDs(root, prefix string) ([]uint64, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []uint64
	for _, e := range entries {
		text, ok := strings.CutPrefix(e.Name(), prefix)
		id, perr := strconv.ParseUint(text, 10, 64)
		if e.IsDir() && ok && perr == nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// checkPinRoot refuses a pin root that is not (or would not be) on bpffs, or that exists and is not a directory
// owned by root (or this process's user) and closed to group and others: whoever can write there can rename pins
// so that status and detach no longer see capture that stays attached.
func checkPinRoot(root string) error {
	if err := hostfs.RequireBPFFS(root); err != nil {
		return err
	}
	var st unix.Stat_t
	err := unix.Lstat(root, &st)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pin dir %q: %w", root, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("pin dir %q is not a directory (a symlink or a file)", root)
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("pin dir %q is owned by uid %d, not root: refusing to use it (remove it, or chown it to root and chmod 0700)", root, st.Uid)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("pin dir %q is writable by group or others (mode %#o): refusing to use it (chmod 0700)", root, st.Mode&0o7777)
	}
	return nil
}

// lockRoot checks the pin root, creates it (0700) when create is set, and takes its exclusive lock. It returns
// ok=false (and no lock) when the root does not exist and create is not set. The lock is taken on the directory
// itself; a root removed and made again meanwhile (removeIfEmpty by the previous holder) is locked anew.
func lockRoot(root string, create bool) (unlock func(), ok bool, err error) {
	if _, err := os.Lstat(root); errors.Is(err, os.ErrNotExist) && !create {
		return nil, false, nil
	}
	if err := checkPinRoot(root); err != nil {
		return nil, false, err
	}
	for {
		if create {
			if err := os.MkdirAll(root, 0o700); err != nil {
				return nil, false, fmt.Errorf("create pin dir %q: %w", root, err)
			}
			if err := checkPinRoot(root); err != nil { // made by someone else in between
				return nil, false, err
			}
		}
		fd, err := flockDir(root)
		if errors.Is(err, os.ErrNotExist) && !create {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if sameDir(root, fd) {
			return func() { unix.Close(fd) }, true, nil
		}
		unix.Close(fd)
	}
}

// sameDir: the locked directory fd is still the one at path (not removed, nor replaced by a new one).
func sameDir(path string, fd int) bool {
	var a, b unix.Stat_t
	return unix.Fstat(fd, &a) == nil && unix.Stat(path, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev && a.Nlink > 0
}

// lockDir takes an exclusive flock on a directory (an inbound pin dir) and returns its release.
func lockDir(dir string) (func(), error) {
	fd, err := flockDir(dir)
	if err != nil {
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

func flockDir(dir string) (int, error) {
	fd, err := unix.Open(filepath.Clean(dir), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("lock %s: %w", dir, &os.PathError{Op: "open", Path: dir, Err: err})
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("lock %s: %w", dir, err)
	}
	return fd, nil
}

// swapIn pins each map of fresh under <name>_new in dir, calls activate (which points the programs at them), then
// renames them over the old pins. On error the _new pins are removed and the old pins stay.
func swapIn(dir string, fresh map[string]interface{ Pin(string) error }, activate func() error) (err error) {
	var tmp []string
	defer func() {
		if err != nil {
			for _, t := range tmp {
				_ = os.Remove(t)
			}
		}
	}()
	names := make([]string, 0, len(fresh))
	for name := range fresh {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t := filepath.Join(dir, name+swapSuffix)
		_ = os.Remove(t) // left by an interrupted swap
		if err := fresh[name].Pin(t); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
		tmp = append(tmp, t)
	}
	if err := activate(); err != nil {
		return err
	}
	for _, name := range names {
		if err := os.Rename(filepath.Join(dir, name+swapSuffix), filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("repin map %s: %w", name, err)
		}
	}
	return nil
}

func removeIfEmpty(dir string) {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) == 0 {
		_ = os.Remove(dir)
	}
}
