package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/capture"
)

// Variant is one iptables implementation for one IP family (DEFAULTS.md section 7.1).
type Variant struct {
	Kind     string // "legacy", "nft" or "" (plain iptables, whatever it links to)
	IPv6     bool
	Iptables string // iptables-legacy, ip6tables-nft, iptables, ...
	Save     string
	Restore  string
	Wait     bool // legacy >= 1.6.2: --wait=30 on iptables and iptables-restore
}

func variantNames(kind string, v6 bool) Variant {
	base := "iptables"
	if v6 {
		base = "ip6tables"
	}
	v := Variant{Kind: kind, IPv6: v6}
	suffix := ""
	if kind != "" {
		suffix = "-" + kind
	}
	v.Iptables = base + suffix
	v.Save = base + suffix + "-save"
	v.Restore = base + suffix + "-restore"
	return v
}

func (v Variant) waitArgs() []string {
	if v.Wait {
		return []string{"--wait=30"}
	}
	return nil
}

// istioTargetRE matches a rule whose target is an ISTIO* chain.
var istioTargetRE = regexp.MustCompile(`(^|\s)-[jg] ISTIO`)

var versionRE = regexp.MustCompile(`v(\d+)\.(\d+)\.(\d+)`)

// Applier runs the istio-iptables apply flow through a Runner.
type Applier struct {
	Runner Runner
	Log    *zap.Logger
}

func (a *Applier) log() *zap.Logger {
	if a.Log == nil {
		return zap.NewNop()
	}
	return a.Log
}

func (a *Applier) run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	a.log().Debug("run", zap.String("cmd", name), zap.Strings("args", args))
	return a.Runner.Run(ctx, stdin, name, args...)
}

// probe checks that a variant works: save runs, its version is read, and a test rule can be added and deleted.
func (a *Applier) probe(ctx context.Context, v Variant) (Variant, error) {
	if _, err := a.run(ctx, "", v.Save); err != nil {
		return v, err
	}
	out, err := a.run(ctx, "", v.Save, "--version")
	legacyNew := false
	if err == nil {
		if strings.Contains(out, "nf_tables") {
			if v.Kind == "" {
				v.Kind = "nft"
			}
		} else if m := versionRE.FindStringSubmatch(out); m != nil {
			maj, _ := strconv.Atoi(m[1])
			mnr, _ := strconv.Atoi(m[2])
			pat, _ := strconv.Atoi(m[3])
			legacyNew = maj > 1 || (maj == 1 && (mnr > 6 || (mnr == 6 && pat >= 2)))
		}
	}
	v.Wait = legacyNew && !strings.Contains(out, "nf_tables")
	test := []string{"-t", "nat", "-A", "INPUT", "-p", "255", "-j", "RETURN"}
	if _, err := a.run(ctx, "", v.Iptables, append(test, v.waitArgs()...)...); err != nil {
		return v, err
	}
	test[2] = "-D"
	if _, err := a.run(ctx, "", v.Iptables, append(test, v.waitArgs()...)...); err != nil {
		return v, err
	}
	return v, nil
}

// Detect picks the iptables variant of one family: force ("legacy"/"nft") probes only that one; otherwise legacy
// when iptables-legacy-save shows existing rules (>= 3 lines), else nft when usable, else plain iptables.
func (a *Applier) Detect(ctx context.Context, v6 bool, force string) (Variant, error) {
	switch force {
	case "legacy", "nft":
		v, err := a.probe(ctx, variantNames(force, v6))
		if err != nil {
			return v, fmt.Errorf("forced iptables binary %q not usable: %w", force, err)
		}
		return v, nil
	case "":
	default:
		return Variant{}, fmt.Errorf("invalid --force-iptables-binary %q: want legacy, nft or empty", force)
	}
	legacy := variantNames("legacy", v6)
	if out, err := a.run(ctx, "", legacy.Save); err == nil && len(strings.Split(strings.TrimSpace(out), "\n")) >= 3 {
		if v, err := a.probe(ctx, legacy); err == nil {
			return v, nil
		}
	}
	if v, err := a.probe(ctx, variantNames("nft", v6)); err == nil {
		return v, nil
	}
	v, err := a.probe(ctx, variantNames("", v6))
	if err != nil {
		return v, fmt.Errorf("no usable iptables binary: %w", err)
	}
	return v, nil
}

// State is the ISTIO part of one family's iptables-save output.
type State struct {
	// Chains: table -> ISTIO* chain -> its rules (save text after "-A CHAIN ").
	Chains map[string]map[string][]string
	// Jumps: table -> rules in other chains that mention an ISTIO* chain, as full "-A CHAIN ..." lines.
	Jumps map[string][]string
}

// Residue reports whether any ISTIO chain or rule is present.
func (s State) Residue() bool {
	for _, cs := range s.Chains {
		if len(cs) > 0 {
			return true
		}
	}
	for _, js := range s.Jumps {
		if len(js) > 0 {
			return true
		}
	}
	return false
}

// ParseSave extracts the ISTIO chains and rules of the filter, nat, mangle and raw tables from iptables-save text.
func ParseSave(text string) State {
	s := State{Chains: map[string]map[string][]string{}, Jumps: map[string][]string{}}
	table := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			table = strings.TrimSpace(line[1:])
			switch table {
			case "filter", "nat", "mangle", "raw":
			default:
				table = ""
			}
		case table == "":
		case strings.HasPrefix(line, ":ISTIO"):
			name := strings.Fields(line[1:])[0]
			if s.Chains[table] == nil {
				s.Chains[table] = map[string][]string{}
			}
			if _, ok := s.Chains[table][name]; !ok {
				s.Chains[table][name] = []string{}
			}
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "-I "):
			f := strings.SplitN(line, " ", 3)
			if len(f) < 2 {
				continue
			}
			chain := f[1]
			rest := ""
			if len(f) == 3 {
				rest = f[2]
			}
			if strings.HasPrefix(chain, "ISTIO") {
				if s.Chains[table] == nil {
					s.Chains[table] = map[string][]string{}
				}
				s.Chains[table][chain] = append(s.Chains[table][chain], rest)
			} else if istioTargetRE.MatchString(rest) {
				s.Jumps[table] = append(s.Jumps[table], line)
			}
		}
	}
	return s
}

func (a *Applier) save(ctx context.Context, v Variant) (State, string, error) {
	out, err := a.run(ctx, "", v.Save)
	if err != nil {
		return State{}, "", err
	}
	return ParseSave(out), out, nil
}

// Verify compares the live state of one family with the planned rules: residue = any ISTIO chain or rule exists;
// delta = an expected ISTIO chain is missing or has another number of rules, an unexpected ISTIO chain exists, or an
// expected rule fails `-C`. Rule order is ignored, as in istio.
func (a *Applier) Verify(ctx context.Context, v Variant, rules []Rule) (residue, delta bool, err error) {
	st, _, err := a.save(ctx, v)
	if err != nil {
		return false, false, err
	}
	residue = st.Residue()
	expected := map[string]map[string]int{}
	for t, chains := range chainsByTable(rules) {
		expected[t] = map[string]int{}
		for _, c := range chains {
			expected[t][c] = 0
		}
	}
	for _, r := range rules {
		if m := expected[r.Table]; m != nil {
			if _, ok := m[r.Chain]; ok {
				m[r.Chain]++
			}
		}
	}
	for t, chains := range expected {
		for c, n := range chains {
			got, ok := st.Chains[t][c]
			if !ok || len(got) != n {
				a.log().Debug("delta: chain", zap.String("table", t), zap.String("chain", c), zap.Int("want", n), zap.Int("have", len(got)), zap.Bool("exists", ok))
				delta = true
			}
		}
	}
	for t, chains := range st.Chains {
		for c := range chains {
			if _, ok := expected[t][c]; !ok {
				a.log().Debug("delta: unexpected chain", zap.String("table", t), zap.String("chain", c))
				delta = true
			}
		}
	}
	if !residue || delta {
		return residue, true, nil
	}
	for _, r := range rules {
		if _, err := a.run(ctx, "", v.Iptables, append(r.CheckArgs(), v.waitArgs()...)...); err != nil {
			a.log().Debug("delta: rule missing", zap.String("table", r.Table), zap.String("rule", r.Command()))
			return residue, true, nil
		}
	}
	return residue, false, nil
}

// family is one IP family's plan.
type family struct {
	v     Variant
	rules []Rule
	on    bool // rules are planned for this family
}

// Apply runs the apply flow of DEFAULTS.md section 7 for a validated config and its ruleset.
func (a *Applier) Apply(ctx context.Context, cfg capture.Config, rs *Ruleset) error {
	log := a.log()
	fams, err := a.families(ctx, cfg, rs)
	if err != nil {
		return err
	}
	if cfg.CleanupOnly {
		for _, f := range fams {
			if err := a.Cleanup(ctx, f.v, f.rules); err != nil {
				return err
			}
		}
		log.Info("cleanup done")
		return nil
	}
	residue, delta := false, false
	for _, f := range fams {
		if !f.on {
			continue
		}
		r, d, err := a.Verify(ctx, f.v, f.rules)
		if err != nil {
			return fmt.Errorf("check iptables state: %w", err)
		}
		residue, delta = residue || r, delta || (r && d)
	}
	switch {
	case !residue:
		log.Info("clean state: applying rules")
	case !delta && !cfg.ForceApply:
		log.Info("the expected iptables rules are already in place: nothing to do")
		return nil
	case !delta:
		log.Info("--force-apply: applying over existing rules")
	case cfg.Reconcile:
		log.Info("existing ISTIO rules differ: reconciling")
		return a.reconcile(ctx, fams, rs)
	default:
		log.Warn("existing ISTIO rules differ from the expected ones and --reconcile is off: trying to apply anyway")
	}
	return a.applyAll(ctx, fams, rs)
}

func (a *Applier) families(ctx context.Context, cfg capture.Config, rs *Ruleset) ([]family, error) {
	v4, err := a.Detect(ctx, false, cfg.ForceIptablesBinary)
	if err != nil {
		return nil, fmt.Errorf("detect iptables: %w", err)
	}
	fams := []family{{v: v4, rules: rs.V4, on: true}}
	v6, err := a.Detect(ctx, true, cfg.ForceIptablesBinary)
	switch {
	case err == nil:
		fams = append(fams, family{v: v6, rules: rs.V6, on: rs.IPv6})
	case rs.IPv6:
		return nil, fmt.Errorf("detect ip6tables: %w", err)
	default:
		a.log().Warn("no usable ip6tables; IPv6 is off so continuing", zap.Error(err))
	}
	a.log().Info("iptables variant", zap.String("ipv4", v4.Iptables), zap.String("ipv6", v6.Iptables))
	return fams, nil
}

func (a *Applier) applyAll(ctx context.Context, fams []family, rs *Ruleset) error {
	for _, f := range fams {
		if !f.on {
			continue
		}
		payload := rs.Payload(f.v.IPv6)
		args := append([]string{"--noflush"}, f.v.waitArgs()...)
		if _, err := a.run(ctx, payload, f.v.Restore, args...); err != nil {
			return fmt.Errorf("apply rules: %w", err)
		}
	}
	for _, f := range fams { // final state, logged (best effort)
		if f.on {
			if out, err := a.run(ctx, "", f.v.Save); err == nil {
				a.log().Debug("final state", zap.String("cmd", f.v.Save), zap.String("rules", out))
			}
		}
	}
	return a.Routes(ctx, rs)
}

// Routes adds ::6/128 to lo when IPv6 is on, and the TPROXY ip rule + route. Existing entries are fine.
func (a *Applier) Routes(ctx context.Context, rs *Ruleset) error {
	ignoreExists := func(err error) error {
		var ce *CommandError
		if errors.As(err, &ce) && (strings.Contains(ce.Stderr, "File exists") || strings.Contains(ce.Stderr, "already assigned")) {
			return nil
		}
		return err
	}
	if rs.IPv6 {
		if _, err := a.run(ctx, "", "ip", "-6", "addr", "add", srcV6, "dev", "lo"); ignoreExists(err) != nil {
			return fmt.Errorf("add %s to lo: %w", srcV6, err)
		}
	}
	if rs.TProxyRoute != nil {
		fams := []string{"inet"}
		if rs.IPv6 {
			fams = append(fams, "inet6")
		}
		for _, f := range fams {
			// The kernel accepts the same rule twice: add it only when `ip rule show` has none (idempotent re-runs).
			sel := []string{"fwmark", rs.TProxyRoute.Mark, "lookup", rs.TProxyRoute.Table}
			have, err := a.run(ctx, "", "ip", append([]string{"-f", f, "rule", "show"}, sel...)...)
			if err != nil {
				return fmt.Errorf("tproxy ip rule: %w", err)
			}
			if strings.TrimSpace(have) == "" {
				if _, err := a.run(ctx, "", "ip", append([]string{"-f", f, "rule", "add"}, sel...)...); err != nil {
					return fmt.Errorf("tproxy ip rule: %w", err)
				}
			}
			if _, err := a.run(ctx, "", "ip", "-f", f, "route", "add", "local", "default", "dev", "lo", "table", rs.TProxyRoute.Table); ignoreExists(err) != nil {
				return fmt.Errorf("tproxy ip route: %w", err)
			}
		}
	}
	return nil
}

var guardrailSpecs = func() [][]string {
	var out [][]string
	for _, chain := range []string{"INPUT", "FORWARD", "OUTPUT"} {
		for _, proto := range []string{"tcp", "udp"} {
			out = append(out, []string{chain, "-p", proto, "-j", "DROP"})
		}
	}
	return out
}()

// reconcile: guardrails, cleanup, apply, remove guardrails (always, also after a failure).
func (a *Applier) reconcile(ctx context.Context, fams []family, rs *Ruleset) (err error) {
	var installed []func()
	defer func() {
		for i := len(installed) - 1; i >= 0; i-- {
			installed[i]()
		}
	}()
	for _, f := range fams {
		if !f.on {
			continue
		}
		for _, g := range guardrailSpecs {
			v, spec := f.v, g
			args := append(append([]string{"-t", "filter", "-I", spec[0], "1"}, spec[1:]...), v.waitArgs()...)
			if _, err := a.run(ctx, "", v.Iptables, args...); err != nil {
				return fmt.Errorf("install guardrail: %w", err)
			}
			installed = append(installed, func() {
				args := append(append([]string{"-t", "filter", "-D", spec[0]}, spec[1:]...), v.waitArgs()...)
				if _, err := a.run(context.WithoutCancel(ctx), "", v.Iptables, args...); err != nil {
					a.log().Error("remove guardrail", zap.Error(err))
				}
			})
		}
	}
	for _, f := range fams {
		if err := a.Cleanup(ctx, f.v, f.rules); err != nil {
			return err
		}
	}
	return a.applyAll(ctx, fams, rs)
}

// Cleanup removes the ISTIO rules of one family: the planned rules outside ISTIO chains in reverse order (as istio
// does), then every remaining rule that mentions an ISTIO chain, then flushes and deletes every ISTIO* chain found.
// Missing rules are not errors.
func (a *Applier) Cleanup(ctx context.Context, v Variant, planned []Rule) error {
	st, _, err := a.save(ctx, v)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	if !st.Residue() {
		return nil
	}
	present := map[string]bool{}
	for t := range st.Chains {
		present[t] = true
	}
	for t := range st.Jumps {
		present[t] = true
	}
	for i := len(planned) - 1; i >= 0; i-- {
		r := planned[i]
		if strings.HasPrefix(r.Chain, "ISTIO") || !present[r.Table] {
			continue
		}
		_, _ = a.run(ctx, "", v.Iptables, append(r.DeleteArgs(), v.waitArgs()...)...)
	}
	if st, _, err = a.save(ctx, v); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	for _, t := range tableOrder {
		for _, line := range st.Jumps[t] {
			words, err := splitSaveLine(line)
			if err != nil || len(words) < 2 {
				return fmt.Errorf("cleanup: cannot parse %q", line)
			}
			words[0] = "-D"
			if _, err := a.run(ctx, "", v.Iptables, append(append([]string{"-t", t}, words...), v.waitArgs()...)...); err != nil {
				return fmt.Errorf("cleanup: %w", err)
			}
		}
	}
	for _, op := range []string{"-F", "-X"} {
		for _, t := range tableOrder {
			for _, c := range sortedKeys(st.Chains[t]) {
				if _, err := a.run(ctx, "", v.Iptables, append([]string{"-t", t, op, c}, v.waitArgs()...)...); err != nil {
					return fmt.Errorf("cleanup: %w", err)
				}
			}
		}
	}
	return nil
}

func sortedKeys(m map[string][]string) []string { return slices.Sorted(maps.Keys(m)) }

// splitSaveLine splits an iptables-save rule line into words, honouring the double quotes iptables-save uses.
func splitSaveLine(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			inQuote, have = !inQuote, true
		case ch == ' ' && !inQuote:
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if have {
		words = append(words, cur.String())
	}
	return words, nil
}
