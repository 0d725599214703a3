package loader

import (
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/meshcap/meshcap/pkg/capture"
)

// agentEntries returns the CIDR and port entries of netns key cfgKey.
func agentEntries(t *testing.T, pinDir string, cfgKey uint64) (cidrs []lpmKey, ports []portKey) {
	t.Helper()
	objs, err := OpenPinned(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	for _, name := range []string{mapCIDRExcl, mapCIDRIncl} {
		var k lpmKey
		var v uint8
		it := objs.Maps[name].Iterate()
		for it.Next(&k, &v) {
			if uint64(k.CfgHi)<<32|uint64(k.CfgLo) == cfgKey {
				cidrs = append(cidrs, k)
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
	}
	var pk portKey
	var v uint8
	it := objs.Maps[mapPorts].Iterate()
	for it.Next(&pk, &v) {
		if pk.Cfg == cfgKey {
			ports = append(ports, pk)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return cidrs, ports
}

func TestAgentEnrollInPlace(t *testing.T) {
	outRequireRoot(t)
	cg, root := outNewCgroup(t), outNewPinRoot(t)

	// A leftover per-pod (netns 0) attachment at the same cgroup: the agent takes it over without key 0.
	if _, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	a, err := AttachAgent(cg, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !a.Replaced || !a.ClearedAnyNetns || a.Enrolled != 0 {
		t.Fatalf("AttachAgent over a per-pod attachment: %+v", a)
	}
	if ok, err := NetnsEnrolled(a.PinDir, 0); err != nil || ok {
		t.Fatalf("netns 0 still has settings (%v)", err)
	}

	const cookie = 0x1_0000_0042 // both halves of the LPM key's cookie in use
	p1 := outPolicy(t, func(c *capture.Config) {
		c.OutboundIPRangesExclude = "10.0.0.0/8,192.168.1.0/24"
		c.OutboundPortsExclude = "5432,6379"
	})
	if err := EnrollNetns(a.PinDir, cookie, p1); err != nil {
		t.Fatal(err)
	}
	cidrs, ports := agentEntries(t, a.PinDir, cookie)
	if len(cidrs) != 2 || len(ports) != 2 {
		t.Fatalf("after enroll: cidrs %+v ports %+v", cidrs, ports)
	}
	// Same policy again (an agent restart): idempotent.
	if err := EnrollNetns(a.PinDir, cookie, p1); err != nil {
		t.Fatal(err)
	}
	if c2, p2 := agentEntries(t, a.PinDir, cookie); len(c2) != 2 || len(p2) != 2 {
		t.Fatalf("after re-enroll: cidrs %+v ports %+v", c2, p2)
	}
	// A changed policy replaces the entries: the stale ones go, the new ones are there.
	p2 := outPolicy(t, func(c *capture.Config) {
		c.OutboundIPRangesExclude = "10.0.0.0/8"
		c.OutboundPortsExclude = "9000"
	})
	if err := EnrollNetns(a.PinDir, cookie, p2); err != nil {
		t.Fatal(err)
	}
	cidrs, ports = agentEntries(t, a.PinDir, cookie)
	if len(cidrs) != 1 || cidrs[0].Prefixlen != 64+8 || len(ports) != 1 || ports[0].Port != 9000 {
		t.Fatalf("after policy change: cidrs %+v ports %+v", cidrs, ports)
	}
	if err := EnrollNetns(a.PinDir, cookie+1, p1); err != nil {
		t.Fatal(err)
	}
	got, err := EnrolledNetns(a.PinDir)
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []uint64{cookie, cookie + 1}) {
		t.Fatalf("enrolled %v (%v)", got, err)
	}
	if err := EnrollNetns(a.PinDir, 0, p1); err == nil {
		t.Fatal("enrolling netns cookie 0 (every netns) succeeded")
	}

	// A restart keeps every enrollment; unenroll removes one pod's entries only.
	a2, err := AttachAgent(cg, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !a2.Replaced || a2.ClearedAnyNetns || a2.Enrolled != 2 {
		t.Fatalf("AttachAgent restart: %+v", a2)
	}
	if err := UnenrollNetns(a.PinDir, cookie); err != nil {
		t.Fatal(err)
	}
	if err := UnenrollNetns(a.PinDir, cookie); err != nil {
		t.Fatalf("second unenroll: %v", err)
	}
	if c, p := agentEntries(t, a.PinDir, cookie); len(c)+len(p) != 0 {
		t.Fatalf("after unenroll: cidrs %+v ports %+v", c, p)
	}
	if c, p := agentEntries(t, a.PinDir, cookie+1); len(c) != 2 || len(p) != 2 {
		t.Fatalf("other pod after unenroll: cidrs %+v ports %+v", c, p)
	}

	res, err := UninstallAll(root)
	if err != nil || len(res.Outbound) != 1 {
		t.Fatalf("uninstall: %+v %v", res, err)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin root left: %v", err)
	}
	if ids := outAttachedProgs(t, cg, ebpf.AttachCGroupInet4Connect); len(ids) != 0 {
		t.Fatalf("connect4 still attached: %v", ids)
	}
	if err := UnenrollNetns(a.PinDir, cookie+1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unenroll after uninstall: %v, want not-exist", err)
	}
}
