package test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchSmokeDirect runs `meshcap bench --quick --scenarios direct --rounds 1` with very short tests and checks
// the JSON lines: the exact keys, every metric family present, positive rates, no conntrack in the baseline, and
// that the SVG and Markdown reports are written. Everything the bench made must be gone afterwards.
func TestBenchSmokeDirect(t *testing.T) {
	requireRoot(t)
	prefix := "mcs" + randHex(2)
	dir := t.TempDir()
	svg, md := filepath.Join(dir, "bench.svg"), filepath.Join(dir, "bench.md")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, meshcapBin, "bench", "--quick", "--scenarios", "direct", "--rounds", "1",
		"--duration", "200ms", "--warmup", "50ms", "--pod-prefix", prefix, "--json", "--out-svg", svg, "--out-md", md)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("meshcap bench: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), out)
	}
	type line struct {
		Scenario, Metric, Unit, Ratio string
		Median, Min, Max              *float64
	}
	metrics := map[string]line{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		for _, k := range []string{"scenario", "metric", "unit", "median", "min", "max"} {
			if _, ok := raw[k]; !ok {
				t.Fatalf("line %q lacks %q", sc.Text(), k)
			}
		}
		if len(raw) != 6 {
			t.Errorf("line %q has %d keys, want 6", sc.Text(), len(raw))
		}
		var l line
		_ = json.Unmarshal(sc.Bytes(), &l)
		if l.Scenario != "direct" {
			t.Errorf("line %q: scenario %q, want direct", sc.Text(), l.Scenario)
		}
		if *l.Min > *l.Median || *l.Median > *l.Max {
			t.Errorf("line %q: not min <= median <= max", sc.Text())
		}
		metrics[l.Metric] = l
	}
	for _, name := range []string{"rr_1_c1", "rr_1_c16", "rr_1k_c1", "rr_1k_c16", "connect_c1", "connect_c16", "stream_c1",
		"p50_rr_1k_c16", "p99_rr_1k_c16", "p99_connect_c1", "cpu_rr_1_c1", "cpu_connect_c1"} {
		l, ok := metrics[name]
		if !ok {
			t.Errorf("no %s line in:\n%s", name, out)
			continue
		}
		if *l.Median <= 0 {
			t.Errorf("%s median %v, want > 0", name, *l.Median)
		}
	}
	if l, ok := metrics["conntrack_peak"]; !ok || *l.Max != 0 {
		t.Errorf("conntrack_peak %+v: the direct baseline must have no conntrack entries", l)
	}
	for _, f := range []string{svg, md} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			t.Errorf("report %s not written: %v", f, err)
		}
	}
	if data, _ := os.ReadFile(md); !strings.Contains(string(data), "| rr_1k_c16 | req/s |") {
		t.Errorf("markdown report lacks the rr_1k_c16 row:\n%s", data)
	}
	// Pods are removed: none of this run's netns (<prefix><hex>-c / -s) stayed.
	for n := range benchNetns(prefix) {
		t.Errorf("netns %s left behind", n)
	}
}

// benchNetns lists the network namespaces named like the pods of a bench run with this --pod-prefix.
func benchNetns(prefix string) map[string]bool {
	out := map[string]bool{}
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, prefix) && (strings.HasSuffix(n, "-c") || strings.HasSuffix(n, "-s")) {
			out[n] = true
		}
	}
	return out
}
