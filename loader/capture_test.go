package loader

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/capture"
)

// TestCaptureInCgroup runs a client+proxy child in an attached cgroup (and a netns with only lo) and checks the
// connect4 decision order, SO_ORIGINAL_DST, getpeername and the Go OrigDst lookup.
func TestCaptureInCgroup(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	p := outPolicy(t, func(c *capture.Config) {
		c.ProxyPort = "15011"
		c.OutboundIPRangesInclude = "203.0.113.0/24,198.51.100.0/24"
		c.OutboundIPRangesExclude = "203.0.113.128/25"
		c.OutboundPortsExclude = "8081"
		c.OutboundPortsInclude = "9090"
	})
	if _, err := Attach(cg, p, root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"203.0.113.7:80":     true,  // -i
		"198.51.100.9:443":   true,  // -i, second CIDR
		"203.0.113.7:8081":   false, // -o beats -i
		"203.0.113.200:80":   false, // -x beats -i
		"192.0.2.55:80":      false, // outside -i
		"192.0.2.55:9090":    true,  // -q captures outside -i
		"203.0.113.200:9090": false, // -x beats -q
		"127.0.0.5:80":       false, // loopback
		"198.51.100.9:8081":  false, // -o
		"udp:203.0.113.7:53": false, // UDP is never touched
	}
	// Many concurrent connections to distinct destinations: each must get its own original destination back.
	for i := 1; i <= 100; i++ {
		want[fmt.Sprintf("198.51.100.%d:%d", i, 1000+i)] = true
	}
	var dests []string
	for d := range want {
		dests = append(dests, d)
	}
	out := outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: dests, UID: -1, GID: -1, PinRoot: root})
	if len(out.Results) != len(want) {
		t.Fatalf("got %d results, want %d", len(out.Results), len(want))
	}
	for _, r := range out.Results {
		if !strings.HasPrefix(r.Dest, "198.51.100.") || r.Dest == "198.51.100.9:443" {
			t.Logf("%+v", r)
		}
		if r.Captured != want[r.Dest] {
			t.Errorf("%s: captured=%v, want %v (err %q)", r.Dest, r.Captured, want[r.Dest], r.Err)
			continue
		}
		if !r.Captured {
			continue
		}
		if r.OrigDst != r.Dest {
			t.Errorf("%s: SO_ORIGINAL_DST = %s", r.Dest, r.OrigDst)
		}
		if r.MapDst != r.Dest {
			t.Errorf("%s: OrigDst() = %s", r.Dest, r.MapDst)
		}
		if r.Peer != r.Dest {
			t.Errorf("%s: client getpeername = %s", r.Dest, r.Peer)
		}
		if r.ProxyKey[0] != "127.0.0.1:15011" {
			t.Errorf("%s: proxy accepted on %s", r.Dest, r.ProxyKey[0])
		}
	}
}

// TestOrigDstAfterClientClosed: a client that writes and closes before the proxy accepts still has its original
// destination answered.
func TestOrigDstAfterClientClosed(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	if _, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	dests := []string{"198.51.100.3:83", "203.0.113.1:81", "203.0.113.2:82"} // sorted
	out := outRunChild(t, cg, childArgs{ProxyPort: 15001, Dests: dests, UID: -1, GID: -1, EarlyClose: true})
	got := append([]string(nil), out.LateOrig...)
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(dests, ",") {
		t.Errorf("late SO_ORIGINAL_DST answers %v, want %v", got, dests)
	}
}

// TestAgentModePerNetnsSettings: one settings-less attachment (node-agent mode); a netns is captured only once
// settings keyed by its netns cookie are written, with its own lists.
func TestAgentModePerNetnsSettings(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := AttachShared(cg, root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dests := []string{"203.0.113.7:80", "203.0.113.7:8081", "203.0.113.200:80", "192.0.2.1:80"}
	want := map[string]bool{"203.0.113.7:80": true}

	// No settings for this netns: nothing captured.
	out := outRunChild(t, cg, childArgs{ProxyPort: 15001, Dests: dests, UID: -1, GID: -1})
	for _, r := range out.Results {
		if r.Captured {
			t.Errorf("%s captured without settings", r.Dest)
		}
	}

	p := outPolicy(t, func(c *capture.Config) {
		c.ProxyPort = "15021"
		c.OutboundIPRangesInclude = "203.0.113.0/24"
		c.OutboundIPRangesExclude = "203.0.113.128/25"
		c.OutboundPortsExclude = "8081"
	})
	var cookie uint64
	out = outRunChildWithCookie(t, cg, childArgs{ProxyPort: 15021, Dests: dests, UID: -1, GID: -1, PinRoot: root}, func(c uint64) {
		cookie = c
		objs, err := OpenPinned(a.PinDir)
		if err != nil {
			t.Fatal(err)
		}
		defer objs.Close()
		// Another netns's settings (catch-all) must not leak into this one.
		if err := objs.SetPolicy(c+1, outPolicy(t, nil)); err != nil {
			t.Fatal(err)
		}
		if err := objs.SetPolicy(c, p); err != nil {
			t.Fatal(err)
		}
	})
	for _, r := range out.Results {
		if r.Captured != want[r.Dest] {
			t.Errorf("%s: captured=%v, want %v (%s)", r.Dest, r.Captured, want[r.Dest], r.Err)
		}
		if r.Captured && (r.OrigDst != r.Dest || r.MapDst != r.Dest || r.Peer != r.Dest) {
			t.Errorf("%s: %+v", r.Dest, r)
		}
	}
	// Program upgrade keeps per-netns settings.
	if _, err := AttachShared(cg, root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, _ := MapEntries(a.PinDir, mapConfig); n != 2 {
		t.Errorf("mc_config has %d entries after an upgrade, want 2", n)
	}
	objs, err := OpenPinned(a.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	for _, k := range []uint64{cookie, cookie + 1} {
		if err := objs.DeletePolicy(k); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range settingsMaps {
		if n, _ := countEntries(objs.Maps[m]); n != 0 {
			t.Errorf("%s has %d entries after DeletePolicy", m, n)
		}
	}
}

// TestCaptureOwnerExempt: the proxy's uid or gid goes direct, as istio's --uid-owner/--gid-owner RETURN rules.
func TestCaptureOwnerExempt(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	p := outPolicy(t, func(c *capture.Config) { c.ProxyUID = "1337"; c.ProxyGID = "1338" })
	if _, err := Attach(cg, p, root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		uid, gid int
		captured bool
	}{
		{-1, -1, true}, // root
		{1337, -1, false},
		{-1, 1338, false},
		{1337, 1337, false},
		{1000, 1337, true}, // gid 1337 is not in -g here
	} {
		out := outRunChild(t, cg, childArgs{ProxyPort: 15001, Dests: []string{"203.0.113.7:80"}, UID: tc.uid, GID: tc.gid})
		if r := out.Results[0]; r.Captured != tc.captured {
			t.Errorf("uid %d gid %d: captured=%v, want %v (%s)", tc.uid, tc.gid, r.Captured, tc.captured, r.Err)
		}
	}
}

// settledStats reads the counters of key 0 once the gauges are back to zero, or after 3 s. The helper child has
// exited, but the kernel finishes closing its orphaned sockets (a FIN not yet acknowledged) asynchronously, and the
// last entries are freed at their TCP_CLOSE.
func settledStats(t *testing.T, pinDir string) CaptureStats {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		stats, err := ReadCaptureStats(pinDir)
		if err != nil {
			t.Fatal(err)
		}
		if s := stats[0]; (s.ConnsInUse == 0 && s.TuplesInUse == 0) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMapsBounded: 20k sequential short captured connections leave (almost) nothing behind in the state maps.
// With the fast path on, the sockhash must be empty too.
func TestMapsBounded(t *testing.T) {
	outRequireRoot(t)
	if testing.Short() {
		t.Skip("20k connections")
	}
	for _, fast := range []bool{false, true} {
		t.Run(fmt.Sprintf("fastpath=%v", fast), func(t *testing.T) { testMapsBounded(t, fast) })
	}
}

func testMapsBounded(t *testing.T, fast bool) {
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{FastPath: fast})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	out := outRunChild(t, cg, childArgs{ProxyPort: 15001, Sequential: "203.0.113.7:80", Count: n, UID: -1, GID: -1})
	if out.SeqOK != n {
		t.Errorf("%d of %d sequential connections went through the proxy", out.SeqOK, n)
	}
	maps := []string{mapOrigTuple} // mc_client is socket storage (freed with each socket, not iterable)
	if fast {
		maps = append(maps, mapSockhash)
		if st, err := ReadFastPathStats(a.PinDir); err != nil || st.RedirectMsgs < n {
			t.Errorf("fast path counters: %+v %v", st, err)
		}
	}
	for _, m := range maps {
		got, err := MapEntries(a.PinDir, m)
		if err != nil {
			t.Fatal(err)
		}
		// The child has exited: every socket is closed. A handful may linger only if a close was not seen.
		if got > 16 {
			t.Errorf("%s holds %d entries after %d closed connections", m, got, n)
		}
		t.Logf("%s: %d entries", m, got)
	}
	// Exact: every captured socket gave its slot back, and every proxy-side entry was freed.
	s := settledStats(t, a.PinDir)
	if s.ConnsInUse != 0 || s.TuplesInUse != 0 || s.Captured != n || s.RefusedFull != 0 || s.TupleLost != 0 {
		t.Errorf("counters after %d closed connections: %+v", n, s)
	}
	if st, _ := GetStatus(root); st != nil {
		t.Log(strings.TrimSpace(fmt.Sprintf("%+v", st.Attachments[0].Maps)))
	}
}

// TestLocalAddrsLifecycle: the pod's own addresses (mc_local) follow the policy written for its key: replaced by a
// new list, kept when the list is unknown (nil: a resync that could not read the netns), removed with the policy.
func TestLocalAddrsLifecycle(t *testing.T) {
	objs := outSharedObjects(t)
	const key = 77
	p := outPolicy(t, nil)
	for _, step := range []struct {
		addrs []netip.Addr
		want  int
	}{
		{[]netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::3")}, 2},
		{[]netip.Addr{netip.MustParseAddr("10.1.2.4")}, 1},
		{nil, 1},
	} {
		p.LocalAddrs = step.addrs
		if err := objs.SetPolicy(key, p); err != nil {
			t.Fatal(err)
		}
		if n, _ := countEntries(objs.Maps[mapLocal]); n != step.want {
			t.Errorf("after SetPolicy with %v: %d mc_local entries, want %d", step.addrs, n, step.want)
		}
	}
	var k localKey
	var v uint8
	if it := objs.Maps[mapLocal].Iterate(); !it.Next(&k, &v) || k.Cfg != key || addrFromBE32x4(k.Addr) != netip.MustParseAddr("::ffff:10.1.2.4") {
		t.Errorf("mc_local entry %+v, want key %d and ::ffff:10.1.2.4", k, key)
	}
	if err := objs.DeletePolicy(key); err != nil {
		t.Fatal(err)
	}
	if n, _ := countEntries(objs.Maps[mapLocal]); n != 0 {
		t.Errorf("%d mc_local entries after DeletePolicy", n)
	}
}

// outSharedObjects attaches shared (agent-mode) capture to a new cgroup and opens its pinned objects, closed when
// the test ends (root only).
func outSharedObjects(t *testing.T) *Objects {
	t.Helper()
	outRequireRoot(t)
	a, err := AttachShared(outNewCgroup(t), outNewPinRoot(t), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := OpenPinned(a.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(objs.Close)
	return objs
}
