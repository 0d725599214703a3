package loader

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/hostfs"
)

// Attachment describes one attached cgroup.
type Attachment struct {
	CgroupDir string
	CgroupID  uint64
	PinDir    string
	Replaced  bool // the cgroup was already attached: settings were replaced in place
}

// Attach attaches the outbound programs to cgroupDir with policy p (written under netns key 0) and pins links and
// maps under pinRoot/cgroup-<id> ("" = DefaultPinRoot). Attaching an already-attached cgroup replaces its settings
// atomically: new programs with new settings maps take over the existing links (link update), while the
// connection-state maps are kept, so connections already captured still get their answers.
// On error nothing new stays attached or pinned (a failed replace leaves the previous attachment as it was).
// Outbound only: CapturePod is "capture this pod" (outbound and inbound, in order, with rollback).
func Attach(cgroupDir string, p capture.Policy, pinRoot string, opts LoadOptions) (*Attachment, error) {
	if err := validatePolicy(p); err != nil {
		return nil, err
	}
	return withRoot(pinRoot, func(root string) (*Attachment, error) { return attachLocked(cgroupDir, &p, root, opts) })
}

// AttachShared attaches the programs to cgroupDir without any settings: node-agent mode, one attachment at a root
// cgroup where nothing is captured until per-netns settings are written (EnrollNetns). Key 0 is never written, so
// netns without settings are left alone. On an existing attachment it upgrades the programs and keeps every map
// (settings and connection state).
func AttachShared(cgroupDir, pinRoot string, opts LoadOptions) (*Attachment, error) {
	return withRoot(pinRoot, func(root string) (*Attachment, error) { return attachLocked(cgroupDir, nil, root, opts) })
}

// withRoot runs fn under the pin root's lock (creating the root).
func withRoot[T any](pinRoot string, fn func(root string) (T, error)) (T, error) {
	var zero T
	root := rootOrDefault(pinRoot)
	unlock, _, err := lockRoot(root, true)
	if err != nil {
		return zero, err
	}
	defer unlock()
	v, err := fn(root)
	if err != nil {
		removeIfEmpty(root) // a failed first attach leaves no pin root behind
	}
	return v, err
}

// attachLocked: p == nil means "no settings change" (AttachShared). The caller holds the pin root's lock.
func attachLocked(cgroupDir string, p *capture.Policy, pinRoot string, opts LoadOptions) (*Attachment, error) {
	id, err := hostfs.CgroupID(cgroupDir)
	if err != nil {
		return nil, err
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}
	dir := pinDirFor(pinRoot, id)
	a := &Attachment{CgroupDir: cgroupDir, CgroupID: id, PinDir: dir}
	if _, err := os.Stat(dir); err == nil {
		if complete(dir) {
			a.Replaced = true
			if err := replace(cgroupDir, dir, p, opts); err != nil {
				return nil, fmt.Errorf("replace settings of %s: %w", cgroupDir, err)
			}
			return a, nil
		}
		// Leftover of an interrupted attach or detach: clear it and attach afresh.
		if err := detachDir(dir); err != nil {
			return nil, fmt.Errorf("clear incomplete pins %s: %w", dir, err)
		}
	}
	if err := fresh(cgroupDir, dir, p, opts); err != nil {
		removeIfEmpty(pinRoot)
		return nil, fmt.Errorf("attach %s: %w", cgroupDir, err)
	}
	return a, nil
}

// complete reports whether dir holds every link and map pin of an attachment.
func complete(dir string) bool {
	for _, h := range hooks {
		if _, err := os.Stat(linkPin(dir, h.name)); err != nil && !h.added {
			return false
		}
	}
	for _, m := range append(append([]string{}, settingsMaps...), stateMaps...) {
		if _, err := os.Stat(mapPin(dir, m)); err != nil && !slices.Contains(addedMaps, m) {
			return false
		}
	}
	return true
}

func fresh(cgroupDir, dir string, p *capture.Policy, opts LoadOptions) (err error) {
	objs, err := Load(opts)
	if err != nil {
		return err
	}
	defer objs.Close()
	if p != nil {
		if err := objs.SetPolicy(0, *p); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	var links []link.Link
	defer func() {
		for _, l := range links {
			if err != nil {
				_ = l.Detach()
			}
			l.Close()
		}
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	// Maps first: once connect4 is attached, the state must already be reachable by pin.
	for name, m := range objs.Maps {
		if err := m.Pin(mapPin(dir, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	for _, h := range hooks {
		l, err := attachPinned(cgroupDir, dir, h, objs)
		if err != nil {
			return err
		}
		links = append(links, l)
	}
	return nil
}

// attachPinned attaches hook h of objs to cgroupDir and pins its link in dir (detached again if it cannot be).
func attachPinned(cgroupDir, dir string, h hook, objs *Objects) (link.Link, error) {
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupDir, Attach: h.attach, Program: objs.Programs[h.name]})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.name, err)
	}
	if err := l.Pin(linkPin(dir, h.name)); err != nil {
		_ = l.Detach()
		l.Close()
		return nil, fmt.Errorf("pin %s link: %w", h.name, err)
	}
	return l, nil
}

// replace swaps in programs bound to fresh settings maps (holding p) and the existing state maps. With p == nil
// the settings maps are kept too (a program upgrade).
func replace(cgroupDir, dir string, p *capture.Policy, opts LoadOptions) (err error) {
	reuse := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range reuse {
			m.Close()
		}
	}()
	var sizeConns uint32
	keep := stateMaps
	if p == nil {
		keep = append(append([]string{}, stateMaps...), settingsMaps...)
	}
	var newPins []string // maps an older attachment did not have (addedMaps)
	for _, name := range keep {
		m, err := ebpf.LoadPinnedMap(mapPin(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) && slices.Contains(addedMaps, name) {
			newPins = append(newPins, name)
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		reuse[name] = m
		// Keep the pinned sizes: a replacement map must match its spec.
		switch name {
		case mapOrigTuple:
			if p != nil && opts.MaxConns > m.MaxEntries()/2 {
				return fmt.Errorf("--max-connections %d is above this attachment's capacity %d: detach, then attach again", opts.MaxConns, m.MaxEntries()/2)
			}
			sizeConns = m.MaxEntries() / 2
		case mapConfig:
			opts.MaxPolicies = m.MaxEntries()
		}
	}
	cfgConns := opts.MaxConns
	opts.MaxConns = sizeConns
	objs, err := load(opts, reuse)
	if err != nil {
		return err
	}
	defer objs.Close()
	objs.MaxConns = cfgConns
	for _, name := range newPins {
		if err := objs.Maps[name].Pin(mapPin(dir, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	if p == nil {
		return updateLinks(cgroupDir, dir, objs)
	}
	if err := objs.SetPolicy(0, *p); err != nil {
		return err
	}
	fresh := map[string]interface{ Pin(string) error }{}
	for _, name := range settingsMaps {
		fresh[name] = objs.Maps[name]
	}
	return swapIn(dir, fresh, func() error { return updateLinks(cgroupDir, dir, objs) })
}

// updateLinks points every pinned link of dir at the programs of objs; a newer hook's link the attachment lacks
// (made before the hook existed) is attached to cgroupDir and pinned, in hook order.
func updateLinks(cgroupDir, dir string, objs *Objects) error {
	links := make([]link.Link, len(hooks))
	defer func() {
		for _, l := range links {
			if l != nil {
				l.Close()
			}
		}
	}()
	for i, h := range hooks {
		l, err := link.LoadPinnedLink(linkPin(dir, h.name), nil)
		if errors.Is(err, os.ErrNotExist) && h.added {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned %s link: %w", h.name, err)
		}
		links[i] = l
	}
	// The connect programs are last in hooks: the programs that read settings switch after the others.
	for i, h := range hooks {
		if links[i] == nil {
			l, err := attachPinned(cgroupDir, dir, h, objs)
			if err != nil {
				return err
			}
			links[i] = l
			continue
		}
		if err := links[i].Update(objs.Programs[h.name]); err != nil {
			return fmt.Errorf("update %s link: %w", h.name, err)
		}
	}
	return nil
}

// OpenPinned opens the maps of the attachment pinned in pinDir (a cgroup-<id> directory), for SetPolicy and
// DeletePolicy on a live attachment (node-agent mode). Objects.Programs is empty. Close it when done.
func OpenPinned(pinDir string) (*Objects, error) {
	objs := &Objects{Programs: map[string]*ebpf.Program{}, Maps: map[string]*ebpf.Map{}}
	for _, name := range append(append([]string{}, settingsMaps...), stateMaps...) {
		m, err := ebpf.LoadPinnedMap(mapPin(pinDir, name), nil)
		if errors.Is(err, os.ErrNotExist) && slices.Contains(addedMaps, name) {
			continue // attached before the fast path or IPv6 capture existed
		}
		if err != nil {
			objs.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		objs.Maps[name] = m
	}
	return objs, nil
}

// Detach detaches and unpins the outbound attachment of cgroupDir. Detaching a cgroup that is not attached is not
// an error; attached reports whether there was something to remove. A cgroupDir that does not exist cannot be
// identified (its id, the pin dir's name, is unknown), so nothing is detached for it: no other attachment is ever
// taken for it (see PruneGone for attachments whose cgroup the kernel says is gone).
func Detach(cgroupDir, pinRoot string) (attached bool, err error) {
	root := rootOrDefault(pinRoot)
	unlock, ok, err := lockRoot(root, false)
	if !ok || err != nil {
		return false, err
	}
	defer unlock()
	return detachLocked(cgroupDir, root)
}

func detachLocked(cgroupDir, root string) (bool, error) {
	id, err := hostfs.CgroupID(cgroupDir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	dir := pinDirFor(root, id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err := detachDir(dir); err != nil {
		return true, fmt.Errorf("detach %s: %w", cgroupDir, err)
	}
	removeIfEmpty(root)
	return true, nil
}

// PruneGone detaches and unpins the outbound attachments whose cgroup the kernel says no longer exists (its id
// does not resolve: hostfs.CgroupGone), and returns their pin dirs. A cgroup that merely cannot be seen from here
// (another cgroup namespace, a hidden mount) is kept.
func PruneGone(pinRoot string) ([]string, error) {
	return detachMatchingLocked(pinRoot, func(id uint64) bool {
		gone, _ := hostfs.CgroupGone(id)
		return gone
	})
}

// FastPathStats are the fast path's counters (bpf/fastpath.c), summed over CPUs.
type FastPathStats struct {
	RedirectMsgs  uint64 // messages moved straight into the peer socket's receive queue
	RedirectBytes uint64
	PassMsgs      uint64 // messages of sockets in the sockhash that went through TCP
}

// ReadFastPathStats reads the fast-path counters of the attachment pinned in pinDir (zero for an attachment
// without the fast-path maps).
func ReadFastPathStats(pinDir string) (FastPathStats, error) {
	var st FastPathStats
	m, err := ebpf.LoadPinnedMap(mapPin(pinDir, mapFPStats), nil)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("open pinned map %s: %w", mapFPStats, err)
	}
	defer m.Close()
	for i, dst := range []*uint64{&st.RedirectMsgs, &st.RedirectBytes, &st.PassMsgs} {
		var perCPU []uint64
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return st, fmt.Errorf("read %s[%d]: %w", mapFPStats, i, err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return st, nil
}

// DetachAll detaches every attachment pinned under pinRoot (including those whose cgroup is gone) and removes the
// pin root when it is left empty. It returns the pin dirs it removed.
func DetachAll(pinRoot string) ([]string, error) {
	return detachMatchingLocked(pinRoot, func(uint64) bool { return true })
}

// detachMatchingLocked is detachMatching under the pin root's lock (nothing to do when the root does not exist).
func detachMatchingLocked(pinRoot string, match func(id uint64) bool) ([]string, error) {
	root := rootOrDefault(pinRoot)
	unlock, ok, err := lockRoot(root, false)
	if !ok || err != nil {
		return nil, err
	}
	defer unlock()
	return detachMatching(root, match)
}

// detachMatching detaches the cgroup-<id> attachments under pinRoot for which match(id) holds.
func detachMatching(pinRoot string, match func(id uint64) bool) ([]string, error) {
	ids, err := outboundIDs(pinRoot)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, id := range ids {
		if !match(id) {
			continue
		}
		dir := pinDirFor(pinRoot, id)
		if err := detachDir(dir); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", dir, err))
			continue
		}
		removed = append(removed, dir)
	}
	removeIfEmpty(pinRoot)
	return removed, errors.Join(errs...)
}

// detachDir detaches every pinned link in dir (connect4 first, so no new connection is redirected while the rest
// goes) and removes the pins.
func detachDir(dir string) error {
	var errs []error
	for i := len(hooks) - 1; i >= 0; i-- {
		path := linkPin(dir, hooks[i].name)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", path, err))
			continue
		}
		// Detach cuts the link even if another process still holds an fd to it; unpin + close alone would not.
		if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", hooks[i].name, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
		l.Close()
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Everything left in dir is a map pin: dir was found under a pin root checked to be on bpffs.
	return os.RemoveAll(dir)
}
