package loader

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/meshcap/meshcap/pkg/capture"
)

// mappedPolicy is TestCaptureInCgroup's policy: the IPv4 lists decide IPv4-mapped destinations too.
func mappedPolicy(t *testing.T) capture.Policy {
	return outPolicy(t, func(c *capture.Config) {
		c.ProxyPort = "15011"
		c.ProxyUID = "1337"
		c.OutboundIPRangesInclude = "203.0.113.0/24"
		c.OutboundIPRangesExclude = "203.0.113.128/25"
		c.OutboundPortsExclude = "8081"
		c.OutboundPortsInclude = "9090"
	})
}

// TestCaptureV4Mapped: an AF_INET6 socket connecting to ::ffff:a.b.c.d is decided with the IPv4 policy exactly as
// an AF_INET one (connect6), delivered to the proxy's IPv4 listener, answered by SO_ORIGINAL_DST (plain socket API)
// and by OrigDst() with the IPv4 destination, and shown its mapped destination by getpeername. Counted like IPv4;
// nothing is left in use once the sockets are closed.
func TestCaptureV4Mapped(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, mappedPolicy(t), root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"203.0.113.7:80":     true,  // -i
		"203.0.113.7:8081":   false, // -o
		"203.0.113.200:80":   false, // -x
		"192.0.2.55:80":      false, // not included
		"192.0.2.55:9090":    true,  // -q
		"127.0.0.5:80":       false, // loopback
		"203.0.113.200:9090": false, // -x beats -q
	}
	var dests []string
	for d := range want {
		dests = append(dests, "mapped:"+d, d) // both families, concurrently
	}
	out := outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: dests, UID: -1, GID: -1, PinRoot: root})
	if len(out.Results) != len(dests) {
		t.Fatalf("got %d results, want %d", len(out.Results), len(dests))
	}
	captured := 0
	for _, r := range out.Results {
		d, mapped := strings.CutPrefix(r.Dest, "mapped:")
		if r.Captured != want[d] {
			t.Errorf("%s: captured=%v, want %v (err %q)", r.Dest, r.Captured, want[d], r.Err)
			continue
		}
		if !r.Captured {
			// Direct: no route in the child's netns, and nothing listens on 127.0.0.5.
			direct := "network is unreachable"
			if strings.HasPrefix(d, "127.") {
				direct = "connection refused"
			}
			if !strings.Contains(r.Err, direct) {
				t.Errorf("%s: not captured but %q, want a direct connect (%s)", r.Dest, r.Err, direct)
			}
			continue
		}
		captured++
		peer := d
		if mapped {
			peer = "[::ffff:" + strings.Replace(d, ":", "]:", 1)
		}
		if r.Peer != peer {
			t.Errorf("%s: client getpeername = %s, want %s", r.Dest, r.Peer, peer)
		}
		if r.OrigDst != d || r.MapDst != d {
			t.Errorf("%s: SO_ORIGINAL_DST = %s, OrigDst() = %s, want %s", r.Dest, r.OrigDst, r.MapDst, d)
		}
		if r.ProxyKey[0] != "127.0.0.1:15011" {
			t.Errorf("%s: proxy accepted on %s", r.Dest, r.ProxyKey[0])
		}
	}
	s := settledStats(t, a.PinDir)
	if s.Captured != uint64(captured) || captured != 4 || s.ExemptPort != 2 || s.ExemptCIDR != 4 || s.ExemptLoopback != 2 ||
		s.NotIncluded != 2 || s.ConnsInUse != 0 || s.TuplesInUse != 0 {
		t.Errorf("counters %+v after %d captured connections (2 per family), want every slot and entry back", s, captured)
	}
	if n, err := MapEntries(a.PinDir, mapOrigTuple); err != nil || n != 0 {
		t.Errorf("%s holds %d entries after close (%v)", mapOrigTuple, n, err)
	}
}

// TestV4MappedFailsClosed: with the proxy stopped a captured mapped connect is refused (it never goes direct); the
// proxy's uid goes direct; at capacity a mapped connect is refused with EPERM and counted.
func TestV4MappedFailsClosed(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, mappedPolicy(t), root, LoadOptions{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	dest := "mapped:203.0.113.7:80"
	out := outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: []string{dest}, UID: -1, GID: -1, NoProxy: true})
	if r := out.Results[0]; r.Captured || !strings.Contains(r.Err, "connection refused") {
		t.Errorf("proxy stopped: %+v, want connection refused by the proxy port", r)
	}
	out = outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: []string{dest}, UID: 1337, GID: -1})
	if r := out.Results[0]; r.Captured || !strings.Contains(r.Err, "network is unreachable") {
		t.Errorf("uid 1337: %+v, want a direct connect (network unreachable)", r)
	}
	out = outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: []string{dest}, UID: -1, GID: -1,
		HoldOpen: []string{dest, "203.0.113.8:80"}})
	if r := out.Results[0]; r.Captured || !strings.Contains(r.Err, "operation not permitted") {
		t.Errorf("at capacity: %+v, want EPERM", r)
	}
	if s := settledStats(t, a.PinDir); s.RefusedFull != 1 || s.Captured != 3 || s.ExemptOwner != 1 || s.ConnsInUse != 0 || s.TuplesInUse != 0 {
		t.Errorf("counters %+v: want 1 refused at capacity, 3 captured, 1 owner-exempt, nothing in use", s)
	}
}

// TestAttachAddsNewHooks: an attachment pinned before connect6/getpeername6 existed (their links absent) gets them
// on its next attach, in place (its other links and state kept), and then captures mapped connects.
func TestAttachAddsNewHooks(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, mappedPolicy(t), root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := outAttachedProgs(t, cg, ebpf.AttachCGroupInet4Connect)
	for _, h := range hooks {
		if !h.added {
			continue
		}
		l, err := link.LoadPinnedLink(linkPin(a.PinDir, h.name), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Detach(); err != nil {
			t.Fatal(err)
		}
		_ = l.Unpin()
		l.Close()
	}
	out := outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: []string{"mapped:203.0.113.7:80"}, UID: -1, GID: -1})
	if out.Results[0].Captured {
		t.Fatal("captured without connect6: the old layout was not reproduced")
	}
	a2, err := Attach(cg, mappedPolicy(t), root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !a2.Replaced {
		t.Error("re-attach of an attachment without the new hooks was not done in place")
	}
	for _, h := range hooks {
		if ids := outAttachedProgs(t, cg, h.attach); len(ids) != 1 {
			t.Errorf("%s: %d programs attached, want 1", h.name, len(ids))
		}
	}
	if after := outAttachedProgs(t, cg, ebpf.AttachCGroupInet4Connect); len(before) != 1 || len(after) != 1 || before[0] == after[0] {
		t.Errorf("connect4 programs %v then %v: want the link updated to a new program", before, after)
	}
	out = outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: []string{"mapped:203.0.113.7:80"}, UID: -1, GID: -1})
	if r := out.Results[0]; !r.Captured || r.OrigDst != "203.0.113.7:80" || r.Peer != "[::ffff:203.0.113.7]:80" {
		t.Errorf("after re-attach: %+v, want captured", r)
	}
}

// ipv6Policy captures native IPv6 as istio's ip6tables rules would in a pod with IPv6 enabled.
func ipv6Policy(t *testing.T, enabled bool) capture.Policy {
	p := outPolicy(t, func(c *capture.Config) {
		c.ProxyPort = "15011"
		c.ProxyUID = "1337"
		c.OutboundIPRangesInclude = "203.0.113.0/24,2001:db8:1::/48"
		c.OutboundIPRangesExclude = "2001:db8:1:ff::/64"
		c.OutboundPortsExclude = "8081"
		c.OutboundPortsInclude = "9090"
	})
	p.IPv6 = enabled
	return p
}

// TestCaptureIPv6: in a pod with IPv6 enabled, connect6 decides native IPv6 destinations with the IPv6 lists, the
// same ports and owners, ::1 as loopback, sends them to the proxy's [::1] listener, where SO_ORIGINAL_DST at
// SOL_IPV6 (plain socket API) and OrigDst() answer the IPv6 destination; getpeername shows it to the app.
func TestCaptureIPv6(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, ipv6Policy(t, true), root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"[2001:db8:1::7]:80":    true,  // -i
		"[2001:db8:1::7]:8081":  false, // -o
		"[2001:db8:1:ff::1]:80": false, // -x
		"[2001:db8:2::1]:80":    false, // not included
		"[2001:db8:2::1]:9090":  true,  // -q
		"[::1]:80":              false, // loopback
		"203.0.113.7:80":        true,  // IPv4 unchanged
		"mapped:203.0.113.7:80": true,
	}
	var dests []string
	for d := range want {
		dests = append(dests, d)
	}
	out := outRunChild(t, cg, childArgs{ProxyPort: 15011, Dests: dests, UID: -1, GID: -1, PinRoot: root, Listen6: true})
	for _, r := range out.Results {
		if r.Captured != want[r.Dest] {
			t.Errorf("%s: captured=%v, want %v (err %q)", r.Dest, r.Captured, want[r.Dest], r.Err)
			continue
		}
		d, mapped := strings.CutPrefix(r.Dest, "mapped:")
		if !r.Captured {
			direct := "network is unreachable"
			if d == "[::1]:80" {
				direct = "connection refused"
			}
			if !strings.Contains(r.Err, direct) {
				t.Errorf("%s: not captured but %q, want a direct connect (%s)", r.Dest, r.Err, direct)
			}
			continue
		}
		native := strings.HasPrefix(d, "[")
		if r.OrigDst != d || r.MapDst != d {
			t.Errorf("%s: SO_ORIGINAL_DST = %s, OrigDst() = %s, want %s", r.Dest, r.OrigDst, r.MapDst, d)
		}
		wantPeer, wantProxy := d, "127.0.0.1:15011"
		if native {
			wantProxy = "[::1]:15011"
		} else if mapped {
			wantPeer = "[::ffff:" + strings.Replace(d, ":", "]:", 1)
		}
		if r.Peer != wantPeer || r.ProxyKey[0] != wantProxy {
			t.Errorf("%s: getpeername %s, proxy accepted on %s; want %s, %s", r.Dest, r.Peer, r.ProxyKey[0], wantPeer, wantProxy)
		}
	}
	if s := settledStats(t, a.PinDir); s.Captured != 4 || s.ExemptPort != 1 || s.ExemptCIDR != 1 || s.ExemptLoopback != 1 || s.NotIncluded != 1 ||
		s.ConnsInUse != 0 || s.TuplesInUse != 0 {
		t.Errorf("counters %+v: want 4 captured, one of each exemption, nothing in use", s)
	}
	if n, err := MapEntries(a.PinDir, mapOrigTup6); err != nil || n != 0 {
		t.Errorf("%s holds %d entries after close (%v)", mapOrigTup6, n, err)
	}
}

// TestIPv6FailsClosed: native IPv6 is refused with the proxy stopped, goes direct as the proxy's uid, is refused at
// capacity; and a pod without IPv6 enabled leaves native IPv6 alone (istio writes no ip6tables rules then).
func TestIPv6FailsClosed(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, ipv6Policy(t, true), root, LoadOptions{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	dest := "[2001:db8:1::7]:80"
	run := func(a childArgs) childResult {
		a.ProxyPort, a.Dests, a.Listen6 = 15011, []string{dest}, !a.NoProxy
		if a.UID == 0 {
			a.UID = -1
		}
		a.GID = -1
		return outRunChild(t, cg, a).Results[0]
	}
	if r := run(childArgs{NoProxy: true}); r.Captured || !strings.Contains(r.Err, "connection refused") {
		t.Errorf("proxy stopped: %+v, want connection refused by the proxy port", r)
	}
	if r := run(childArgs{UID: 1337}); r.Captured || !strings.Contains(r.Err, "network is unreachable") {
		t.Errorf("uid 1337: %+v, want a direct connect (network unreachable)", r)
	}
	if r := run(childArgs{HoldOpen: []string{dest, "[2001:db8:1::8]:80"}}); r.Captured || !strings.Contains(r.Err, "operation not permitted") {
		t.Errorf("at capacity: %+v, want EPERM", r)
	}
	if s := settledStats(t, a.PinDir); s.RefusedFull != 1 || s.Captured != 3 || s.ExemptOwner != 1 || s.ConnsInUse != 0 || s.TuplesInUse != 0 {
		t.Errorf("counters %+v: want 1 refused at capacity, 3 captured, 1 owner-exempt, nothing in use", s)
	}
	if _, err := Attach(cg, ipv6Policy(t, false), root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	if r := run(childArgs{}); r.Captured || !strings.Contains(r.Err, "network is unreachable") {
		t.Errorf("IPv6 not enabled: %+v, want a direct connect as under istio", r)
	}
}
