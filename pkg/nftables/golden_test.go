package nftables

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/nftables/nfttest"
)

const goldenDir = "../../testdata/istio-golden/nftables"

func loadCases(t *testing.T) []nfttest.Case {
	t.Helper()
	cases, err := nfttest.Load(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	return cases
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
	cfg, err := nfttest.Case{Args: args, Env: env}.Config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
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
			rs, err := Build(cfg, gc.Facts())
			if err != nil {
				t.Fatal(err)
			}
			got, want := Plan(rs, PlanOptions{}).String(), readGolden(t, gc.Golden)
			if got != want {
				t.Fatalf("transaction differs from %s:\n%s\nwant:\n%s", gc.Golden, got, want)
			}
		})
	}
}
