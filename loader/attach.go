package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/meshcap/meshcap/pkg/capture"
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
func Attach(cgroupDir string, p capture.Policy, pinRoot string, opts LoadOptions) (*Attachment, error) {
	if _, err := configFor(p); err != nil {
		return nil, err
	}
	return attach(cgroupDir, &p, pinRoot, opts)
}

// AttachShared attaches the programs to cgroupDir without any settings: node-agent mode, one attachment at a root
// cgroup where nothing is captured until per-netns settings are written (OpenPinned + SetPolicy(netnsCookie, p)).
// Key 0 is never written, so netns without settings are left alone. On an existing attachment it upgrades the
// programs and keeps every map (settings and connection state).
func AttachShared(cgroupDir, pinRoot string, opts LoadOptions) (*Attachment, error) {
	return attach(cgroupDir, nil, pinRoot, opts)
}

// attach: p == nil means "no settings change" (AttachShared).
func attach(cgroupDir string, p *capture.Policy, pinRoot string, opts LoadOptions) (*Attachment, error) {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	id, err := cgroupID(cgroupDir)
	if err != nil {
		return nil, err
	}
	if err := checkPinRoot(pinRoot); err != nil {
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
			if err := replace(dir, p, opts); err != nil {
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
		return nil, fmt.Errorf("attach %s: %w", cgroupDir, err)
	}
	return a, nil
}

// complete reports whether dir holds every link and map pin of an attachment.
func complete(dir string) bool {
	for _, h := range hooks {
		if _, err := os.Stat(linkPin(dir, h.name)); err != nil {
			return false
		}
	}
	for _, m := range append(append([]string{}, settingsMaps...), stateMaps...) {
		if _, err := os.Stat(mapPin(dir, m)); err != nil {
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
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupDir, Attach: h.attach, Program: objs.Programs[h.name]})
		if err != nil {
			return fmt.Errorf("attach %s: %w", h.name, err)
		}
		links = append(links, l)
		if err := l.Pin(linkPin(dir, h.name)); err != nil {
			return fmt.Errorf("pin %s link: %w", h.name, err)
		}
	}
	return nil
}

// replace swaps in programs bound to fresh settings maps (holding p) and the existing state maps. With p == nil
// the settings maps are kept too (a program upgrade).
func replace(dir string, p *capture.Policy, opts LoadOptions) (err error) {
	reuse := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range reuse {
			m.Close()
		}
	}()
	keep := stateMaps
	if p == nil {
		keep = append(append([]string{}, stateMaps...), settingsMaps...)
	}
	for _, name := range keep {
		m, err := ebpf.LoadPinnedMap(mapPin(dir, name), nil)
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		reuse[name] = m
		// Keep the pinned sizes: a replacement map must match its spec.
		switch name {
		case mapOrigCookie, mapOrigTuple:
			opts.MaxConns = m.MaxEntries()
		case mapConfig:
			opts.MaxPolicies = m.MaxEntries()
		}
	}
	var newPins []string // fast-path maps an older attachment did not have
	for _, name := range fastPathMaps {
		m, err := ebpf.LoadPinnedMap(mapPin(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			newPins = append(newPins, name)
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		reuse[name] = m
	}
	objs, err := load(opts, reuse)
	if err != nil {
		return err
	}
	defer objs.Close()
	for _, name := range newPins {
		if err := objs.Maps[name].Pin(mapPin(dir, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	if p == nil {
		return updateLinks(dir, objs)
	}
	if err := objs.SetPolicy(0, *p); err != nil {
		return err
	}
	// Pin the new settings maps beside the old ones (as <name>_new: bpffs refuses names with a dot); they replace the old pins (rename) once the links point at them.
	var tmp []string
	defer func() {
		if err != nil {
			for _, t := range tmp {
				_ = os.Remove(t)
			}
		}
	}()
	for _, name := range settingsMaps {
		t := mapPin(dir, name+"_new")
		_ = os.Remove(t)
		if err := objs.Maps[name].Pin(t); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
		tmp = append(tmp, t)
	}
	if err := updateLinks(dir, objs); err != nil {
		return err
	}
	for _, name := range settingsMaps {
		if err := os.Rename(mapPin(dir, name+"_new"), mapPin(dir, name)); err != nil {
			return fmt.Errorf("repin map %s: %w", name, err)
		}
	}
	return nil
}

// updateLinks points every pinned link of dir at the programs of objs.
func updateLinks(dir string, objs *Objects) error {
	links := make([]link.Link, 0, len(hooks))
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	for _, h := range hooks {
		l, err := link.LoadPinnedLink(linkPin(dir, h.name), nil)
		if err != nil {
			return fmt.Errorf("open pinned %s link: %w", h.name, err)
		}
		links = append(links, l)
	}
	// connect4 is last in hooks: the only program that reads settings switches after the others.
	for i, h := range hooks {
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
	for _, name := range append(append(append([]string{}, settingsMaps...), stateMaps...), fastPathMaps...) {
		m, err := ebpf.LoadPinnedMap(mapPin(pinDir, name), nil)
		if errors.Is(err, os.ErrNotExist) && slices.Contains(fastPathMaps, name) {
			continue // attached before the fast path existed
		}
		if err != nil {
			objs.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		objs.Maps[name] = m
	}
	return objs, nil
}

// Detach detaches and unpins the attachment of cgroupDir. Detaching a cgroup that is not attached is not an
// error; attached reports whether there was something to remove. When cgroupDir no longer exists, its inode (the
// pin dir's name) cannot be known, so Detach removes every attachment whose cgroup is gone instead.
func Detach(cgroupDir, pinRoot string) (attached bool, err error) {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	if ok, err := pinRootExists(pinRoot); !ok || err != nil {
		return false, err
	}
	id, err := cgroupID(cgroupDir)
	if errors.Is(err, os.ErrNotExist) {
		removed, err := detachMatching(pinRoot, func(id uint64) bool { _, gone := cgroupPathByID(id); return gone })
		return len(removed) > 0, err
	}
	if err != nil {
		return false, err
	}
	dir := pinDirFor(pinRoot, id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err := detachDir(dir); err != nil {
		return true, fmt.Errorf("detach %s: %w", cgroupDir, err)
	}
	removeIfEmpty(pinRoot)
	return true, nil
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
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	if ok, err := pinRootExists(pinRoot); !ok || err != nil {
		return nil, err
	}
	return detachMatching(pinRoot, func(uint64) bool { return true })
}

// pinRootExists reports whether pinRoot exists, and refuses one that is not on bpffs: detach removes what it finds
// there, which must only ever be BPF pins.
func pinRootExists(pinRoot string) (bool, error) {
	if _, err := os.Stat(pinRoot); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err := checkPinRoot(pinRoot); err != nil {
		return false, err
	}
	return true, nil
}

// detachMatching detaches the cgroup-<id> attachments under pinRoot for which match(id) holds.
func detachMatching(pinRoot string, match func(id uint64) bool) ([]string, error) {
	entries, err := os.ReadDir(pinRoot)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		idText, ok := strings.CutPrefix(e.Name(), "cgroup-")
		id, perr := strconv.ParseUint(idText, 10, 64)
		if !e.IsDir() || !ok || perr != nil || !match(id) {
			continue
		}
		dir := filepath.Join(pinRoot, e.Name())
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

func removeIfEmpty(dir string) {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) == 0 {
		_ = os.Remove(dir)
	}
}
