package loader

// The cgroup half of inbound capture (bpf/inbound_bind.c, inbound_sockops.c, inbound_getsockopt.c): attached to the
// pod's cgroup (per-pod mode) or the node agent's shared cgroup (agent mode), next to the outbound programs, with
// bpf_link multi-attach. They register any exempt listener on the capture port by themselves and answer
// SO_ORIGINAL_DST on steered connections. Their links are pinned in the netns's inbound directory, so detaching the
// netns detaches them too.

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// inbCgroupPrograms loads the inbound cgroup hooks (hooks.go), one load per object, with every map shared with the
// sk_lookup collection. Programs are keyed by pin name.
func inbCgroupPrograms(shared map[string]*ebpf.Map) (map[string]*ebpf.Program, func(), error) {
	progs := map[string]*ebpf.Program{}
	var colls []*ebpf.Collection
	release := func() {
		for _, c := range colls {
			c.Close()
		}
	}
	for _, group := range byObject(inbCgroupHooks) {
		spec, err := group[0].load()
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("load %s: %w", group[0].object, err)
		}
		repl := map[string]*ebpf.Map{}
		for name, m := range shared {
			if spec.Maps[name] != nil {
				repl[name] = m
			}
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("load inbound %s programs: %w", group[0].object, inbVerifierError(err))
		}
		colls = append(colls, coll)
		for _, h := range group {
			if progs[inbCgroupPin(h)] = coll.Programs[h.prog]; progs[inbCgroupPin(h)] == nil {
				release()
				return nil, nil, fmt.Errorf("load inbound %s program: %s missing from %s", h.name, h.prog, h.object)
			}
		}
	}
	return progs, release, nil
}

// inbAttachCgroup attaches (or, when pinned links exist, atomically updates) the inbound cgroup programs on
// cgroupDir and pins their links in dir. Returns the pins it created (to undo on a later failure).
func inbAttachCgroup(dir, cgroupDir string, shared map[string]*ebpf.Map) (created []string, err error) {
	progs, release, err := inbCgroupPrograms(shared)
	if err != nil {
		return nil, err
	}
	defer release()
	defer func() {
		if err != nil {
			for _, pin := range created {
				inbDetachPinnedLink(inbPin(dir, pin))
			}
			created = nil
		}
	}()
	for _, h := range inbCgroupHooks {
		pin := inbCgroupPin(h)
		path := inbPin(dir, pin)
		if l, lerr := link.LoadPinnedLink(path, nil); lerr == nil {
			uerr := l.Update(progs[pin])
			l.Close()
			if uerr == nil {
				continue
			}
			inbDetachPinnedLink(path) // a link whose cgroup is gone, or of another type: attach afresh
		}
		if cgroupDir == "" {
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupDir, Attach: h.attach, Program: progs[pin]})
		if err != nil {
			return created, fmt.Errorf("attach inbound %s to %s: %w", pin, cgroupDir, err)
		}
		_ = os.Remove(path)
		if err := l.Pin(path); err != nil {
			l.Close()
			return created, fmt.Errorf("pin inbound %s link: %w", pin, err)
		}
		l.Close()
		created = append(created, pin)
	}
	return created, nil
}

// inbDetachPinnedLink detaches the link pinned at path (explicitly: another process may hold a reference) and
// removes the pin. Missing pins are fine.
func inbDetachPinnedLink(path string) {
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		_ = l.Detach()
		l.Close()
	}
	_ = os.Remove(path)
}

// inbCgroupAttached reports whether the inbound cgroup programs of dir are pinned (self-registration is on).
func inbCgroupAttached(dir string) bool {
	for _, h := range inbCgroupHooks {
		if _, err := os.Stat(inbPin(dir, inbCgroupPin(h))); err != nil {
			return false
		}
	}
	return true
}

// inbDetachLinks detaches every link pinned in dir (the sk_lookup link and the cgroup links).
func inbDetachLinks(dir string) error {
	paths := []string{inbPin(dir, inbPinLink)}
	for _, h := range inbCgroupHooks {
		paths = append(paths, inbPin(dir, inbCgroupPin(h)))
	}
	var errs []error
	for _, p := range paths {
		l, err := link.LoadPinnedLink(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", p, err))
			continue
		}
		if err := l.Detach(); err != nil && !inbLinkGone(err) {
			errs = append(errs, fmt.Errorf("detach %s: %w", p, err))
		}
		l.Close()
	}
	return errors.Join(errs...)
}
