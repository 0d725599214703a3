package loader

import (
	"slices"
	"testing"
)

// TestHookTableMatchesObjects: each table entry names a program of its object, and the types written in the entry
// are the ones the program's ELF section gives (what cilium/ebpf loads it as). Pin names are unique per side.
func TestHookTableMatchesObjects(t *testing.T) {
	pins := map[hookSide]map[string]bool{sideOutbound: {}, sideInbound: {}}
	for _, h := range hookTable {
		spec, err := h.load()
		if err != nil {
			t.Fatalf("%s: %v", h.object, err)
		}
		ps := spec.Programs[h.prog]
		if ps == nil {
			t.Errorf("%s: no program %s in %s", h.name, h.prog, h.object)
			continue
		}
		if ps.Type != h.progType || ps.AttachType != h.attach {
			t.Errorf("%s: table says %s/%s, section %q says %s/%s", h.name, h.progType, h.attach, ps.SectionName, ps.Type, ps.AttachType)
		}
		if pins[h.side][h.name] {
			t.Errorf("%s: two hooks of one side with this name (pin names must be unique)", h.name)
		}
		pins[h.side][h.name] = true
	}
}

// TestDerivedProbeChecks: the probe's checks come from the objects. Each hook's attach point, its program type and
// the helpers its instructions call are checked; the variant's helpers are ScopeVariant, inbound-only checks
// ScopeInbound, and no check appears twice.
func TestDerivedProbeChecks(t *testing.T) {
	scope := map[string]string{}
	for _, it := range hookProbeItems() {
		if _, dup := scope[it.name]; dup {
			t.Errorf("check %s twice", it.name)
		}
		scope[it.name] = it.scope
	}
	want := map[string]string{
		"prog:cgroup_sock_addr": ScopeCore,
		"prog:sk_lookup":        ScopeInbound,
		"map:sk_storage":        ScopeCore,
		"map:sockmap":           ScopeInbound,
		"attach:connect4":       ScopeCore,
		"attach:sock_release":   ScopeCore,
		"attach:sk_msg":         ScopeCore,
		"attach:sk_lookup":      ScopeInbound,
		"attach:post_bind4":     ScopeInbound,
		"helper:cgroup_sock_addr:get_current_uid_gid": ScopeCore,
		"helper:sock_ops:sock_ops_cb_flags_set":       ScopeCore,
		"helper:sk_lookup:sk_assign":                  ScopeInbound,
	}
	// Only sockops.c's other entry point (mc_sockops_btf, loaded instead of mc_sockops by the storage variant when
	// the kernel has BTF) calls it: never required on its own.
	want["helper:sock_ops:skc_to_tcp_sock"] = ScopeVariant
	for _, name := range variantChecks {
		want[name] = ScopeVariant
	}
	for name, s := range want {
		if got, ok := scope[name]; !ok || got != s {
			t.Errorf("%s: scope %q (present %v), want %q", name, got, ok, s)
		}
	}
	for _, h := range hookTable {
		spec, err := h.load()
		if err != nil {
			t.Fatal(err)
		}
		for _, fn := range helperCalls(spec.Programs[h.prog]) {
			if _, ok := scope[helperCheckName(h.progType, fn)]; !ok {
				t.Errorf("%s calls %s, which the probe does not check", h.name, fn)
			}
		}
	}
	if !slices.Contains(ProbeFeatureNames(), "attach:connect6") {
		t.Error("ProbeFeatureNames lacks the derived checks")
	}
}
