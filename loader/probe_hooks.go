package loader

// The probe's kernel checks, derived from the hook table (hooks.go) and the objects themselves: no list here names
// a hook, a helper or a map. Per hook side (outbound: ScopeCore, inbound: ScopeInbound):
//   - prog:<type>           each program type of the table's hooks (features.HaveProgramType);
//   - map:<type>            each map type the hooks' objects create (features.HaveMapType);
//   - attach:<section>      each attach point, named by the program's ELF section without "cgroup/" (a pass-through
//                           program attached to a temporary cgroup, netns or sockhash);
//   - helper:<type>:<name>  each (program type, helper) a `call` instruction of a hook's program makes, or of
//                           another entry point of its object that a variant loads instead (features.HaveProgramHelper).
//                           The checks the variant choice reads (variantChecks) are ScopeVariant where only outbound
//                           programs make them (the other variant avoids those calls), and so are the calls only an
//                           other entry point makes (the loader then keeps the table's program).
// A check used by hooks of both sides gets the stronger scope (core). Names follow the kernel's spelling (the
// BPF_PROG_TYPE_*, BPF_MAP_TYPE_* and BPF_FUNC_* enums in lower case), so they are stable across cilium/ebpf.

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// hookCheck is one derived check before it becomes a probeItem.
type hookCheck struct {
	name  string
	scope string
	run   func(*probeRun) (string, error)
}

// scopeRank orders scopes by how much a missing feature blocks: core blocks any eBPF capture.
func scopeRank(s string) int {
	switch s {
	case ScopeCore:
		return 3
	case ScopeInbound:
		return 2
	}
	return 1
}

func sideScope(s hookSide) string {
	if s == sideInbound {
		return ScopeInbound
	}
	return ScopeCore
}

// checkSet collects checks by name in order of first appearance, keeping the strongest scope of each.
type checkSet struct {
	order []string
	by    map[string]*hookCheck
}

func (cs *checkSet) add(c hookCheck) {
	if cs.by == nil {
		cs.by = map[string]*hookCheck{}
	}
	if old, ok := cs.by[c.name]; ok {
		if scopeRank(c.scope) > scopeRank(old.scope) {
			old.scope = c.scope
		}
		return
	}
	cs.order = append(cs.order, c.name)
	cs.by[c.name] = &c
}

func (cs *checkSet) items() []probeItem {
	out := make([]probeItem, 0, len(cs.order))
	for _, name := range cs.order {
		c := cs.by[name]
		out = append(out, probeItem{c.name, c.scope, c.run})
	}
	return out
}

// hookProbeItems are the derived checks (computed once: the objects are embedded). If an object cannot be read,
// the one check "objects" fails with that error (ScopeCore), so eBPF mode is refused rather than half-checked.
var hookProbeItems = sync.OnceValue(func() []probeItem {
	items, err := deriveHookChecks(hookTable)
	if err != nil {
		return []probeItem{{"objects", ScopeCore, func(*probeRun) (string, error) { return "", err }}}
	}
	return items
})

// deriveHookChecks builds the prog:, map:, attach: and helper: checks of hs from their objects.
func deriveHookChecks(hs []hook) ([]probeItem, error) {
	var progs, maps, attaches, helpers checkSet
	for _, group := range byObject(hs) {
		spec, err := group[0].load()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", group[0].object, err)
		}
		dropUnusedSections(spec)
		for _, h := range group {
			if spec.Programs[h.prog] == nil {
				return nil, fmt.Errorf("%s: program %s missing", h.object, h.prog)
			}
		}
		for _, name := range sortedKeys(spec.Programs) {
			ps := spec.Programs[name]
			h := ownerHook(group, ps)
			scope := sideScope(h.side)
			progs.add(progTypeCheck(h.progType, scope))
			attaches.add(attachCheck(h, ps.SectionName, scope))
			for _, fn := range helperCalls(ps) {
				helpers.add(helperCheck(h, fn, ps.Name != h.prog))
			}
		}
		for _, ms := range sortedMaps(spec) {
			maps.add(mapTypeCheck(ms.Type, sideScope(group[0].side)))
		}
	}
	return slices.Concat(progs.items(), maps.items(), attaches.items(), helpers.items()), nil
}

// ownerHook is the hook a program of the group's object serves: its own entry, or, for another entry point of the
// object (sockops.c's mc_sockops_btf, which a variant loads in mc_sockops's place), the hook with its attach type.
func ownerHook(group []hook, ps *ebpf.ProgramSpec) hook {
	for _, h := range group {
		if h.prog == ps.Name {
			return h
		}
	}
	for _, h := range group {
		if h.attach == ps.AttachType && h.progType == ps.Type {
			return h
		}
	}
	return group[0]
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortedMaps(spec *ebpf.CollectionSpec) []*ebpf.MapSpec {
	out := make([]*ebpf.MapSpec, 0, len(spec.Maps))
	for _, name := range sortedKeys(spec.Maps) {
		out = append(out, spec.Maps[name])
	}
	return out
}

// helperCalls lists the helpers ps calls (its `call` instructions, subprograms included), in order of first call.
func helperCalls(ps *ebpf.ProgramSpec) []asm.BuiltinFunc {
	var out []asm.BuiltinFunc
	for _, ins := range ps.Instructions {
		if !ins.IsBuiltinCall() {
			continue
		}
		if fn := asm.BuiltinFunc(ins.Constant); !slices.Contains(out, fn) {
			out = append(out, fn)
		}
	}
	return out
}

func progTypeCheck(pt ebpf.ProgramType, scope string) hookCheck {
	return hookCheck{"prog:" + progTypeName(pt), scope, func(*probeRun) (string, error) {
		if err := features.HaveProgramType(pt); err != nil {
			return "", err
		}
		return "supported", nil
	}}
}

func mapTypeCheck(mt ebpf.MapType, scope string) hookCheck {
	return hookCheck{"map:" + mapTypeName(mt), scope, func(*probeRun) (string, error) {
		if err := features.HaveMapType(mt); err != nil {
			return "", err
		}
		return "supported", nil
	}}
}

// helperCheck checks a helper that h's program calls; alt: called by another entry point of h's object, which a
// variant loads instead when it can (chooseSockops), so never required on its own.
func helperCheck(h hook, fn asm.BuiltinFunc, alt bool) hookCheck {
	name := helperCheckName(h.progType, fn)
	scope := sideScope(h.side)
	if alt || (h.side == sideOutbound && slices.Contains(variantChecks, name)) {
		scope = ScopeVariant
	}
	return hookCheck{name, scope, func(*probeRun) (string, error) {
		if err := features.HaveProgramHelper(h.progType, fn); err != nil {
			return "", err
		}
		return "available", nil
	}}
}

func helperCheckName(pt ebpf.ProgramType, fn asm.BuiltinFunc) string {
	return "helper:" + progTypeName(pt) + ":" + helperName(fn)
}

// attachCheck loads a pass-through program of h's types and attaches it where h goes.
func attachCheck(h hook, section, scope string) hookCheck {
	name := "attach:" + strings.TrimPrefix(section, "cgroup/")
	run := func(r *probeRun) (string, error) { return r.checkCgroupAttach(h) }
	switch h.target {
	case targetNetns:
		run = func(r *probeRun) (string, error) { return r.checkNetnsAttach(h) }
	case targetSockhash:
		run = func(r *probeRun) (string, error) { return r.checkSockhashAttach(h) }
	}
	return hookCheck{name, scope, run}
}

// kernelName spells a cilium/ebpf constant name (ProgramType, MapType, BuiltinFunc without "Fn") the way the
// kernel's enums do, in lower case: CGroupSockAddr -> cgroup_sock_addr, LPMTrie -> lpm_trie, PerCPUArray ->
// percpu_array, SockMap -> sockmap, GetNetnsCookie -> get_netns_cookie.
func kernelName(s string) string {
	var b strings.Builder
	rs := []rune(s)
	for i, r := range rs {
		upper := r >= 'A' && r <= 'Z'
		if upper && i > 0 {
			prevLower := rs[i-1] < 'A' || rs[i-1] > 'Z'
			nextLower := i+1 < len(rs) && rs[i+1] >= 'a' && rs[i+1] <= 'z'
			if prevLower || nextLower {
				b.WriteByte('_')
			}
		}
		if upper {
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return kernelSpelling.Replace(b.String())
}

// kernelSpelling: words the kernel's enums write as one (BPF_PROG_TYPE_CGROUP_*, BPF_MAP_TYPE_PERCPU_*,
// BPF_MAP_TYPE_SOCKMAP/SOCKHASH).
var kernelSpelling = strings.NewReplacer("c_group", "cgroup", "per_cpu", "percpu", "sock_map", "sockmap", "sock_hash", "sockhash")

func progTypeName(pt ebpf.ProgramType) string { return kernelName(pt.String()) }
func mapTypeName(mt ebpf.MapType) string      { return kernelName(mt.String()) }

// helperName turns asm.FnGetNetnsCookie into "get_netns_cookie".
func helperName(fn asm.BuiltinFunc) string { return kernelName(strings.TrimPrefix(fn.String(), "Fn")) }
