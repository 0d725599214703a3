package iptables

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/capture"
)

// fakeRunner records every command and answers from a handler. Only for unit tests of the flow;
// real_linux_test.go runs the real thing.
type fakeRunner struct {
	cmds    []string // "name args..." (stdin in stdins at the same index)
	stdins  []string
	handler func(cmd string) (string, error)
}

func (f *fakeRunner) Run(_ context.Context, stdin, name string, args ...string) (string, error) {
	cmd := strings.Join(append([]string{name}, args...), " ")
	f.cmds = append(f.cmds, cmd)
	f.stdins = append(f.stdins, stdin)
	if f.handler != nil {
		return f.handler(cmd)
	}
	return "", nil
}

func (f *fakeRunner) find(prefix string) []int {
	var out []int
	for i, c := range f.cmds {
		if strings.HasPrefix(c, prefix) {
			out = append(out, i)
		}
	}
	return out
}

// saveOf renders rules the way iptables-save lists chains and rules (enough for ParseSave).
func saveOf(rules []Rule) string {
	var b strings.Builder
	chains := chainsByTable(rules)
	for _, t := range tableOrder {
		var lines []string
		for _, r := range rules {
			if r.Table == t {
				lines = append(lines, "-A "+r.Chain+" "+strings.Join(r.Spec, " "))
			}
		}
		if len(lines) == 0 {
			continue
		}
		b.WriteString("*" + t + "\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
		for _, c := range chains[t] {
			b.WriteString(":" + c + " - [0:0]\n")
		}
		b.WriteString(strings.Join(lines, "\n") + "\nCOMMIT\n")
	}
	return b.String()
}

func injected(t *testing.T, ipv6 bool, mod func(*capture.Config)) (capture.Config, *Ruleset) {
	t.Helper()
	c := capture.Default()
	c.ProxyUID, c.InboundInterceptionMode, c.OutboundIPRangesInclude = "1337", "REDIRECT", "*"
	c.InboundPortsInclude, c.InboundPortsExclude = "*", "15090,15021,15020"
	if mod != nil {
		mod(&c)
	}
	c.ResolveDefaultsWith(nil)
	rs, err := Build(c, capture.HostFacts{IPv6: ipv6})
	if err != nil {
		t.Fatal(err)
	}
	return c, rs
}

func nftHandler(state4, state6 *string) func(string) (string, error) {
	return func(cmd string) (string, error) {
		switch {
		case cmd == "iptables-nft-save --version":
			return "iptables-nft-save v1.8.9 (nf_tables)\n", nil
		case cmd == "ip6tables-nft-save --version":
			return "ip6tables-nft-save v1.8.9 (nf_tables)\n", nil
		case cmd == "iptables-legacy-save --version":
			return "iptables-legacy-save v1.8.9 (legacy)\n", nil
		case cmd == "ip6tables-legacy-save --version":
			return "ip6tables-legacy-save v1.8.9 (legacy)\n", nil
		case cmd == "iptables-nft-save":
			return *state4, nil
		case cmd == "ip6tables-nft-save":
			return *state6, nil
		}
		return "", nil
	}
}

func TestApplyCleanStateOneRestorePerFamily(t *testing.T) {
	for _, ipv6 := range []bool{false, true} {
		cfg, rs := injected(t, ipv6, nil)
		empty := ""
		f := &fakeRunner{handler: nftHandler(&empty, &empty)}
		if err := (&Applier{Runner: f}).Apply(context.Background(), cfg, rs); err != nil {
			t.Fatal(err)
		}
		r4, r6 := f.find("iptables-nft-restore"), f.find("ip6tables-nft-restore")
		if len(r4) != 1 || f.cmds[r4[0]] != "iptables-nft-restore --noflush" || f.stdins[r4[0]] != rs.Payload(false) {
			t.Fatalf("ipv6=%v: IPv4 restore calls %v", ipv6, f.cmds)
		}
		if ipv6 != (len(r6) == 1) || (ipv6 && f.stdins[r6[0]] != rs.Payload(true)) {
			t.Fatalf("ipv6=%v: IPv6 restore calls %v", ipv6, r6)
		}
		if ipv6 != (len(f.find("ip -6 addr add ::6/128 dev lo")) == 1) {
			t.Fatalf("ipv6=%v: ::6 on lo: %v", ipv6, f.cmds)
		}
		if len(f.find("iptables-legacy-restore")) != 0 || len(f.find("iptables-nft -t filter")) != 0 {
			t.Fatalf("unexpected commands: %v", f.cmds)
		}
	}
}

func TestApplyForcedLegacyWaits(t *testing.T) {
	cfg, rs := injected(t, false, func(c *capture.Config) { c.ForceIptablesBinary = "legacy" })
	empty := ""
	f := &fakeRunner{handler: nftHandler(&empty, &empty)}
	if err := (&Applier{Runner: f}).Apply(context.Background(), cfg, rs); err != nil {
		t.Fatal(err)
	}
	if len(f.find("iptables-legacy-restore --noflush --wait=30")) != 1 || len(f.find("iptables-nft")) != 0 {
		t.Fatalf("commands: %v", f.cmds)
	}
}

func TestDetectAutoPrefersLegacyWithRules(t *testing.T) {
	f := &fakeRunner{handler: func(cmd string) (string, error) {
		switch cmd {
		case "iptables-legacy-save":
			return "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", nil
		case "iptables-legacy-save --version":
			return "iptables-legacy-save v1.8.9 (legacy)\n", nil
		}
		return "", nil
	}}
	v, err := (&Applier{Runner: f}).Detect(context.Background(), false, "")
	if err != nil || v.Kind != "legacy" || !v.Wait {
		t.Fatalf("got %+v %v", v, err)
	}
	f = &fakeRunner{handler: func(cmd string) (string, error) {
		if strings.HasPrefix(cmd, "iptables-nft") || strings.HasPrefix(cmd, "iptables-legacy") {
			return "", errors.New("not found")
		}
		if cmd == "iptables-save --version" {
			return "iptables-save v1.8.9 (nf_tables)", nil
		}
		return "", nil
	}}
	if v, err = (&Applier{Runner: f}).Detect(context.Background(), false, ""); err != nil || v.Iptables != "iptables" || v.Wait {
		t.Fatalf("fallback: %+v %v", v, err)
	}
}

func TestApplyNothingWhenRulesInPlace(t *testing.T) {
	cfg, rs := injected(t, false, nil)
	state, empty := saveOf(rs.V4), ""
	f := &fakeRunner{handler: nftHandler(&state, &empty)}
	if err := (&Applier{Runner: f}).Apply(context.Background(), cfg, rs); err != nil {
		t.Fatal(err)
	}
	if n := len(f.find("iptables-nft-restore")); n != 0 {
		t.Fatalf("restore ran %d times on an up-to-date state", n)
	}
	if n := len(f.find("iptables-nft -t nat -C")); n != len(rs.V4) {
		t.Fatalf("%d -C checks, want %d", n, len(rs.V4))
	}
	// --force-apply applies anyway.
	cfg.ForceApply = true
	f.cmds, f.stdins = nil, nil
	if err := (&Applier{Runner: f}).Apply(context.Background(), cfg, rs); err != nil {
		t.Fatal(err)
	}
	if n := len(f.find("iptables-nft-restore")); n != 1 {
		t.Fatalf("--force-apply: restore ran %d times", n)
	}
}

func TestApplyReconcileOrder(t *testing.T) {
	cfg, rs := injected(t, false, func(c *capture.Config) { c.Reconcile = true })
	drifted := saveOf(append(append([]Rule{}, rs.V4...), Rule{Table: "nat", Chain: "ISTIO_OUTPUT", Spec: []string{"-p", "tcp", "--dport", "9999", "-j", "RETURN"}}))
	empty := ""
	f := &fakeRunner{handler: nftHandler(&drifted, &empty)}
	if err := (&Applier{Runner: f}).Apply(context.Background(), cfg, rs); err != nil {
		t.Fatal(err)
	}
	guardIns := f.find("iptables-nft -t filter -I ")
	guardDel := f.find("iptables-nft -t filter -D ")
	flush := f.find("iptables-nft -t nat -F ISTIO_")
	del := f.find("iptables-nft -t nat -X ISTIO_")
	restore := f.find("iptables-nft-restore --noflush")
	if len(guardIns) != 6 || len(guardDel) != 6 || len(flush) != 4 || len(del) != 4 || len(restore) != 1 {
		t.Fatalf("counts: guard+%d guard-%d F%d X%d restore%d\n%s", len(guardIns), len(guardDel), len(flush), len(del), len(restore), strings.Join(f.cmds, "\n"))
	}
	if !(guardIns[5] < flush[0] && flush[3] < del[0] && del[3] < restore[0] && restore[0] < guardDel[0]) {
		t.Fatalf("order wrong:\n%s", strings.Join(f.cmds, "\n"))
	}
	// The jumps from built-in chains are deleted before the chains.
	if j := f.find("iptables-nft -t nat -D OUTPUT -j ISTIO_OUTPUT"); len(j) == 0 || j[0] > flush[0] {
		t.Fatalf("jump delete: %v", j)
	}
	// Without --reconcile the drifted state is applied over (and fails in real life), with no cleanup.
	cfg.Reconcile = false
	f.cmds, f.stdins = nil, nil
	if err := (&Applier{Runner: f}).Apply(context.Background(), cfg, rs); err != nil {
		t.Fatal(err)
	}
	if len(f.find("iptables-nft -t nat -F")) != 0 || len(f.find("iptables-nft -t filter")) != 0 || len(f.find("iptables-nft-restore")) != 1 {
		t.Fatalf("no-reconcile flow:\n%s", strings.Join(f.cmds, "\n"))
	}
}

func TestApplyTProxyRoutes(t *testing.T) {
	cfg, rs := injected(t, true, func(c *capture.Config) { c.InboundInterceptionMode = "TPROXY" })
	empty := ""
	f := &fakeRunner{handler: nftHandler(&empty, &empty)}
	if err := (&Applier{Runner: f}).Apply(context.Background(), cfg, rs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ip -f inet rule add fwmark 1337 lookup 133", "ip -f inet route add local default dev lo table 133",
		"ip -f inet6 rule add fwmark 1337 lookup 133", "ip -f inet6 route add local default dev lo table 133",
	} {
		if len(f.find(want)) != 1 {
			t.Errorf("missing %q in\n%s", want, strings.Join(f.cmds, "\n"))
		}
	}
}

func TestSplitSaveLine(t *testing.T) {
	got, err := splitSaveLine(`-A OUTPUT -m comment --comment "a \"b\" c" -j ISTIO_OUTPUT`)
	want := []string{"-A", "OUTPUT", "-m", "comment", "--comment", `a "b" c`, "-j", "ISTIO_OUTPUT"}
	if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q %v", got, err)
	}
}
