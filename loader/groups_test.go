package loader

import (
	"testing"

	"github.com/meshcap/meshcap/pkg/capture"
)

// TestCaptureOwnerGroups: istio's rule 13 on a real connect, by the caller's primary gid. Include list: only its
// groups are captured; exclude list: its groups are not. -u/-g (rules 11 and 12) still come first, and each
// exemption is counted as an owner exemption.
func TestCaptureOwnerGroups(t *testing.T) {
	outRequireRoot(t)
	for _, tc := range []struct {
		name   string
		groups capture.OwnerGroups
		want   map[int]bool // gid -> captured
	}{
		{"include", capture.OwnerGroups{Include: true, GIDs: []uint32{2000, 2002}}, map[int]bool{2000: true, 2002: true, 2001: false, 1337: false}},
		{"exclude", capture.OwnerGroups{GIDs: []uint32{2000, 2002}}, map[int]bool{2000: false, 2002: false, 2001: true, 1337: false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := outNewCgroup(t)
			p := outPolicy(t, nil)
			p.OwnerGroups = tc.groups
			a, err := Attach(cg, p, outNewPinRoot(t), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			exempt := 0
			for gid, captured := range tc.want {
				out := outRunChild(t, cg, childArgs{ProxyPort: 15001, Dests: []string{"203.0.113.7:80"}, UID: 1000, GID: gid})
				if r := out.Results[0]; r.Captured != captured {
					t.Errorf("gid %d: captured=%v, want %v (%s)", gid, r.Captured, captured, r.Err)
				}
				if !captured {
					exempt++
				}
			}
			if s := settledStats(t, a.PinDir); s.ExemptOwner != uint64(exempt) {
				t.Errorf("exempt_owner = %d, want %d", s.ExemptOwner, exempt)
			}
		})
	}
}

// TestOwnerGroupsLifecycle: mc_groups follows the policy written for its key (a new list replaces the old one,
// no list leaves no entry) and its mode flag is in mc_config; DeletePolicy removes the entries.
func TestOwnerGroupsLifecycle(t *testing.T) {
	objs := outSharedObjects(t)
	const key = 78
	p := outPolicy(t, nil)
	for _, step := range []struct {
		groups capture.OwnerGroups
		flag   uint8
	}{
		{capture.OwnerGroups{Include: true, GIDs: []uint32{10, 11, 12}}, flagGroupsInclude},
		{capture.OwnerGroups{GIDs: []uint32{11, 13}}, flagGroupsExclude},
		{capture.OwnerGroups{}, 0},
		{capture.OwnerGroups{Include: true}, flagGroupsInclude}, // ISTIO_OUTBOUND_OWNER_GROUPS="": nobody listed
	} {
		p.OwnerGroups = step.groups
		if err := objs.SetPolicy(key, p); err != nil {
			t.Fatal(err)
		}
		got := map[uint32]bool{}
		var k groupKey
		var v uint8
		for it := objs.Maps[mapGroups].Iterate(); it.Next(&k, &v); {
			if k.Cfg != key {
				t.Errorf("mc_groups entry %+v under another key", k)
			}
			got[k.Gid] = true
		}
		if len(got) != len(step.groups.GIDs) {
			t.Errorf("%+v: mc_groups holds %v", step.groups, got)
		}
		for _, g := range step.groups.GIDs {
			if !got[g] {
				t.Errorf("%+v: gid %d missing from mc_groups (%v)", step.groups, g, got)
			}
		}
		var cfg configValue
		if err := objs.Maps[mapConfig].Lookup(uint64(key), &cfg); err != nil {
			t.Fatal(err)
		}
		if f := cfg.Flags & (flagGroupsInclude | flagGroupsExclude); f != step.flag {
			t.Errorf("%+v: group flags %#x, want %#x", step.groups, f, step.flag)
		}
	}
	p.OwnerGroups = capture.OwnerGroups{Include: true, GIDs: []uint32{5}}
	if err := objs.SetPolicy(key, p); err != nil {
		t.Fatal(err)
	}
	if err := objs.DeletePolicy(key); err != nil {
		t.Fatal(err)
	}
	if n, _ := countEntries(objs.Maps[mapGroups]); n != 0 {
		t.Errorf("%d mc_groups entries after DeletePolicy", n)
	}
}
