package nftables

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

const goldenDir = "../../testdata/istio-golden/nftables"

// goldenCase is one row of testdata/istio-golden/nftables/cases.json (see its "about").
type goldenCase struct {
	Name   string            `json:"name"`
	Golden string            `json:"golden"`
	Args   []string          `json:"args"`
	Env    map[string]string `json:"env"`
	V6     bool              `json:"v6"`
	Resolv *string           `json:"resolv"`
	Groups []string          `json:"groups"`
	DNSV4  []string          `json:"dns_v4"`
	DNSV6  []string          `json:"dns_v6"`
	CLI    *bool             `json:"cli"`
}

func loadCases(t *testing.T) []goldenCase {
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

func readGolden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// parseArgs runs args through the CLI's flag binding with a fixed environment and no istio-proxy user.
func parseArgs(t *testing.T, args []string, env map[string]string) capture.Config {
	t.Helper()
	cfg := capture.Default()
	fs := pflag.NewFlagSet("istio-iptables", pflag.ContinueOnError)
	capture.BindFlagsEnv(fs, &cfg, capture.MapEnv(env))
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	cfg.ResolveDefaultsWith(func(string) (string, error) { return "", errors.New("no such user") })
	return cfg
}

func (gc goldenCase) facts() iptables.HostFacts {
	f := iptables.HostFacts{IPv6: gc.V6, DNSServersV4: gc.DNSV4, DNSServersV6: gc.DNSV6}
	if gc.Resolv != nil {
		f.DNSServersV4, f.DNSServersV6 = iptables.ParseResolvConf([]byte(*gc.Resolv))
	}
	return f
}

// TestGoldens: every file of istio's nftables corpus (and the CLI-derived one), byte for byte.
func TestGoldens(t *testing.T) {
	cases := loadCases(t)
	if len(cases) != 29 {
		t.Fatalf("%d cases, want the 28 goldens and 1 CLI-derived file", len(cases))
	}
	for _, gc := range cases {
		t.Run(gc.Name, func(t *testing.T) {
			cfg := parseArgs(t, gc.Args, gc.Env)
			rs, err := Build(cfg, gc.facts())
			if err != nil {
				t.Fatal(err)
			}
			got, want := Plan(rs, PlanOptions{}).String(), readGolden(t, gc.Golden)
			if got != want {
				t.Fatalf("transaction differs from %s:\n%s", gc.Golden, diffLines(got, want))
			}
		})
	}
}

// diffLines shows the first differing line.
func diffLines(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n got  " + gl + "\n want " + wl + "\n--- got:\n" + got
		}
	}
	return "(same lines, different bytes)"
}
