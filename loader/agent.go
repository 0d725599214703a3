package loader

// Node-agent mode (DaemonSet): one shared attachment at the pods' cgroup root (AttachShared), per-pod settings keyed
// by network-namespace cookie in its pinned settings maps, and per-pod inbound attachments under
// <pin root>/netns-<cookie>/inbound. This file holds the pieces only the agent and meshcap-cni use:
//   - AttachAgent: AttachShared plus the removal of any netns-0 ("every netns") settings, so that only enrolled
//     pods are captured even on a cgroup that was once attached in per-pod mode;
//   - EnrollNetns / UnenrollNetns / EnrolledNetns: per-pod settings on the live attachment, serialised by the pin
//     root's lock, and written in place (no moment without settings for a pod already enrolled); CapturePod with
//     an agent target adds the pod's inbound capture in the same sequence;
//   - UninstallAll: detach and unpin every outbound and inbound attachment under a pin root.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/meshcap/meshcap/pkg/capture"
)

// AgentAttachment is the result of AttachAgent.
type AgentAttachment struct {
	*Attachment
	ClearedAnyNetns bool // netns-0 settings (per-pod mode leftovers) were found and removed
	Enrolled        int  // netns with settings after the attach (kept from before a restart)
}

// AttachAgent attaches (or, on a restart or upgrade, re-attaches) the outbound programs at cgroupDir in node-agent
// mode. An existing attachment keeps its links and every map (settings and connection state): the programs are
// swapped in with link updates, so no established connection loses its answers and no new connection of an enrolled
// pod goes uncaptured. Netns-0 settings, which would capture every process under cgroupDir, are removed.
func AttachAgent(cgroupDir, pinRoot string, opts LoadOptions) (*AgentAttachment, error) {
	return withRoot(pinRoot, func(root string) (*AgentAttachment, error) {
		a, err := attachLocked(cgroupDir, nil, root, opts)
		if err != nil {
			return nil, err
		}
		res := &AgentAttachment{Attachment: a}
		objs, err := OpenPinned(a.PinDir)
		if err != nil {
			return nil, err
		}
		defer objs.Close()
		var cfg configValue
		if objs.Maps[mapConfig].Lookup(uint64(0), &cfg) == nil {
			if err := objs.DeletePolicy(0); err != nil {
				return nil, fmt.Errorf("remove netns-0 settings of %s: %w", cgroupDir, err)
			}
			res.ClearedAnyNetns = true
		}
		keys, err := configKeys(objs)
		if err != nil {
			return nil, err
		}
		res.Enrolled = len(keys)
		return res, nil
	})
}

// EnrollNetns writes policy p for the network namespace with this cookie into the attachment pinned in pinDir (a
// cgroup-<id> directory made by AttachAgent), in place (Objects.SetPolicy): a pod already enrolled is never without
// settings, and re-enrolling with the same policy changes nothing. Outbound only: CapturePod with an agent target
// is "capture this pod".
func EnrollNetns(pinDir string, netnsCookie uint64, p capture.Policy) error {
	if err := validatePolicy(p); err != nil {
		return err
	}
	return withPinDir(pinDir, func() error { _, err := enrollLocked(pinDir, netnsCookie, p, 0); return err })
}

// enrollLocked writes the settings of netnsCookie with capacity maxConns (0 = the default); was reports that it had
// settings before. The caller holds the pin root's lock.
func enrollLocked(pinDir string, netnsCookie uint64, p capture.Policy, maxConns uint32) (was bool, err error) {
	if netnsCookie == 0 {
		return false, errors.New("enroll: netns cookie 0 is reserved (it would capture every netns under the cgroup)")
	}
	objs, err := OpenPinned(pinDir)
	if err != nil {
		return false, err
	}
	defer objs.Close()
	objs.MaxConns = maxConns
	var cfg configValue
	was = objs.Maps[mapConfig].Lookup(&netnsCookie, &cfg) == nil
	return was, objs.SetPolicy(netnsCookie, p)
}

// unenrollLocked removes the settings of netnsCookie. The caller holds the pin root's lock.
func unenrollLocked(pinDir string, netnsCookie uint64) error {
	if netnsCookie == 0 {
		return errors.New("unenroll: netns cookie 0 is reserved")
	}
	objs, err := OpenPinned(pinDir)
	if err != nil {
		return err
	}
	defer objs.Close()
	return objs.DeletePolicy(netnsCookie)
}

// withPinDir runs fn under the lock of the pin root that holds the attachment dir pinDir.
func withPinDir(pinDir string, fn func() error) error {
	unlock, ok, err := lockRoot(filepath.Dir(filepath.Clean(pinDir)), false)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("agent attachment %s: %w", pinDir, os.ErrNotExist)
	}
	defer unlock()
	return fn()
}

// UnenrollNetns removes the settings of the network namespace with this cookie (capture of its new connections
// stops at once; connections already captured keep their state). Idempotent.
func UnenrollNetns(pinDir string, netnsCookie uint64) error {
	return withPinDir(pinDir, func() error { return unenrollLocked(pinDir, netnsCookie) })
}

// EnrolledNetns returns the netns cookies that have settings in the attachment pinned in pinDir.
func EnrolledNetns(pinDir string) ([]uint64, error) {
	objs, err := OpenPinned(pinDir)
	if err != nil {
		return nil, err
	}
	defer objs.Close()
	return configKeys(objs)
}

// NetnsEnrolled reports whether the netns with this cookie has settings in the attachment pinned in pinDir.
func NetnsEnrolled(pinDir string, netnsCookie uint64) (bool, error) {
	m, err := ebpf.LoadPinnedMap(mapPin(pinDir, mapConfig), nil)
	if err != nil {
		return false, fmt.Errorf("open pinned map %s: %w", mapConfig, err)
	}
	defer m.Close()
	var cfg configValue
	switch err := m.Lookup(&netnsCookie, &cfg); {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("look up %s: %w", mapConfig, err)
	}
}

func configKeys(objs *Objects) ([]uint64, error) {
	var k uint64
	var cfg configValue
	var keys []uint64
	it := objs.Maps[mapConfig].Iterate()
	for it.Next(&k, &cfg) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", mapConfig, err)
	}
	return keys, nil
}

// Uninstalled lists what UninstallAll removed.
type Uninstalled struct {
	Outbound []string // cgroup-<id> pin dirs
	Inbound  []uint64 // netns cookies of inbound attachments
}

// UninstallAll detaches and unpins every outbound attachment (DetachAll) and every inbound attachment, live netns
// or not, under pinRoot ("" = DefaultPinRoot), then removes pinRoot when nothing else is left in it.
func UninstallAll(pinRoot string) (*Uninstalled, error) {
	root := rootOrDefault(pinRoot)
	res := &Uninstalled{}
	unlock, ok, err := lockRoot(root, false)
	if !ok || err != nil {
		return res, err
	}
	defer unlock()
	dirs, oerr := detachMatching(root, func(uint64) bool { return true })
	res.Outbound = dirs
	cookies, ierr := DetachAllInbound(root)
	res.Inbound = cookies
	removeIfEmpty(root)
	return res, errors.Join(oerr, ierr)
}
