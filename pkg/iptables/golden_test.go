package iptables

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/capture"
)

const goldenDir = "../../testdata/istio-golden"

type goldenCase struct {
	Name   string            `json:"name"`
	Golden string            `json:"golden"`
	Kind   string            `json:"kind"` // "stream" or "payload-v4"
	Args   []string          `json:"args"`
	Env    map[string]string `json:"env"`
	Addrs  []string          `json:"addrs"`
	Resolv *string           `json:"resolv"`
	DNSV4  []string          `json:"dns_v4"`
	DNSV6  []string          `json:"dns_v6"`
	Note   string            `json:"note"`
}

func loadGoldenCases(t *testing.T) []goldenCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(goldenDir, "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []goldenCase `json:"cases"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return f.Cases
}

// configFromArgs runs args through the same flag binding as the CLI.
func configFromArgs(args []string, env map[string]string) (capture.Config, error) {
	cfg, _, err := capture.ParseArgs(args, capture.MapEnv(env))
	cfg.ResolveDefaultsWith(func(string) (string, error) { return "", errors.New("no such user") })
	return cfg, err
}

func buildCase(t *testing.T, gc goldenCase) *Ruleset {
	t.Helper()
	cfg, err := configFromArgs(gc.Args, gc.Env)
	if err != nil {
		t.Fatalf("flags %q: %v", gc.Args, err)
	}
	src := capture.HostSource{
		Addrs: func() ([]netip.Addr, error) {
			var out []netip.Addr
			for _, a := range gc.Addrs {
				out = append(out, netip.MustParseAddr(a))
			}
			return out, nil
		},
		ResolvConf: func() ([]byte, error) {
			if gc.Resolv == nil {
				return nil, os.ErrNotExist
			}
			return []byte(*gc.Resolv), nil
		},
	}
	facts, err := src.Facts(cfg)
	if err != nil {
		t.Fatalf("host facts: %v", err)
	}
	if gc.DNSV4 != nil || gc.DNSV6 != nil {
		facts.DNSServersV4, facts.DNSServersV6 = gc.DNSV4, gc.DNSV6
	}
	rs, err := Build(cfg, facts)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return rs
}

// stripSaves removes the iptables-save/ip6tables-save lines of a recorded stream.
func stripSaves(s string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l == "" || l == "iptables-save\n" || l == "ip6tables-save\n" || l == "iptables-save" || l == "ip6tables-save" {
			continue
		}
		b.WriteString(l)
	}
	return b.String()
}

func TestGolden(t *testing.T) {
	cases := loadGoldenCases(t)
	if len(cases) < 27+8+7 {
		t.Fatalf("only %d cases in cases.json", len(cases))
	}
	used := map[string]bool{}
	for _, gc := range cases {
		used[gc.Golden] = true
		t.Run(gc.Name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(goldenDir, gc.Golden))
			if err != nil {
				t.Fatal(err)
			}
			rs := buildCase(t, gc)
			switch gc.Kind {
			case "stream":
				// The payloads must equal the golden minus its *-save lines, byte for byte...
				got := rs.Payload(false) + rs.Payload(true)
				if w := stripSaves(string(want)); got != w {
					t.Errorf("payload differs from %s:\n%s", gc.Golden, lineDiff(w, got))
				}
				// ...and the whole dry-run stream equals the golden file itself.
				if got := rs.DryRunStream(); got != string(want) {
					t.Errorf("dry-run stream differs from %s:\n%s", gc.Golden, lineDiff(string(want), got))
				}
			case "payload-v4":
				if rs.IPv6 {
					t.Fatalf("case must be IPv4-only")
				}
				if got := rs.Payload(false); got != string(want) {
					t.Errorf("IPv4 payload differs from %s:\n%s", gc.Golden, lineDiff(string(want), got))
				}
			default:
				t.Fatalf("unknown kind %q", gc.Kind)
			}
		})
	}
	// Every golden file is covered by at least one case.
	for _, pattern := range []string{"*.golden", "cni-plugin/*.golden", "cli-derived/*.txt"} {
		files, _ := filepath.Glob(filepath.Join(goldenDir, pattern))
		for _, f := range files {
			rel, _ := filepath.Rel(goldenDir, f)
			if !used[rel] {
				t.Errorf("golden %s has no case in cases.json", rel)
			}
		}
	}
}

func lineDiff(want, got string) string {
	w := strings.Split(want, "\n")
	g := strings.Split(got, "\n")
	var b strings.Builder
	n := max(len(w), len(g))
	for i := 0; i < n; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
		}
	}
	return b.String()
}
