package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
)

func TestHistBucketsContiguous(t *testing.T) {
	prevHi := uint64(0)
	for i := 0; i < histBuckets; i++ {
		lo, hi := histBounds(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if hi < lo {
			t.Fatalf("bucket %d: hi %d < lo %d", i, hi, lo)
		}
		for _, v := range []uint64{lo, hi, lo + (hi-lo)/2} {
			if got := histIndex(v); got != i {
				t.Fatalf("histIndex(%d) = %d, want %d", v, got, i)
			}
		}
		prevHi = hi
		if i == histBuckets-1 && hi != math.MaxUint64 {
			t.Fatalf("last bucket ends at %d, want MaxUint64", hi)
		}
	}
}

func TestHistQuantilesWithinPrecision(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Hist
	var xs []float64
	for range 100000 {
		v := time.Duration(math.Exp(rng.NormFloat64()*1.2+11)) + 1 // log-normal around 60 us
		h.Record(v)
		xs = append(xs, float64(v))
	}
	sort.Float64s(xs)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := xs[int(math.Ceil(q*float64(len(xs))))-1]
		got := float64(h.Quantile(q))
		if rel := math.Abs(got-exact) / exact; rel > 1.0/64 {
			t.Errorf("q%.3f = %.0f, exact %.0f (rel error %.4f > 1/64)", q, got, exact, rel)
		}
	}
	if h.Count() != 100000 || float64(h.Min()) != xs[0] || float64(h.Max()) != xs[len(xs)-1] {
		t.Errorf("count/min/max = %d/%v/%v, want 100000/%v/%v", h.Count(), h.Min(), h.Max(), xs[0], xs[len(xs)-1])
	}
}

func TestHistMergeAndSparse(t *testing.T) {
	var a, b, all Hist
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Microsecond
		all.Record(d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	if a.Quantile(0.5) != all.Quantile(0.5) || a.Quantile(0.99) != all.Quantile(0.99) || a.Count() != all.Count() {
		t.Fatalf("merged p50/p99/n %v/%v/%d, want %v/%v/%d", a.Quantile(0.5), a.Quantile(0.99), a.Count(),
			all.Quantile(0.5), all.Quantile(0.99), all.Count())
	}
	r := HistFromSparse(all.Sparse())
	if r.Count() != all.Count() || r.Quantile(0.9) != all.Quantile(0.9) {
		t.Fatalf("sparse round trip: n %d p90 %v, want %d %v", r.Count(), r.Quantile(0.9), all.Count(), all.Quantile(0.9))
	}
	var empty Hist
	if empty.Quantile(0.99) != 0 || empty.Mean() != 0 {
		t.Fatal("empty histogram must report 0")
	}
}

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		in            []float64
		med, min, max float64
		n             int
	}{
		{[]float64{3, 1, 2}, 2, 1, 3, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4, 4},
		{[]float64{nan, 5, nan}, 5, 5, 5, 1},
	} {
		s := Summarize(c.in)
		if s.Median != c.med || s.Min != c.min || s.Max != c.max || s.N != c.n {
			t.Errorf("Summarize(%v) = %+v, want median %v min %v max %v n %d", c.in, s, c.med, c.min, c.max, c.n)
		}
	}
	if s := Summarize([]float64{nan}); s.N != 0 || !math.IsNaN(s.Median) {
		t.Errorf("Summarize(NaN) = %+v, want empty", s)
	}
}

func TestRotation(t *testing.T) {
	s := []string{"direct", "iptables", "ebpf"}
	want := [][]string{{"direct", "iptables", "ebpf"}, {"iptables", "ebpf", "direct"}, {"ebpf", "direct", "iptables"},
		{"direct", "iptables", "ebpf"}}
	for r, w := range want {
		if got := Rotation(s, r); !reflect.DeepEqual(got, w) {
			t.Errorf("round %d: %v, want %v", r, got, w)
		}
	}
	// Over n rounds every scenario takes every position exactly once.
	pos := map[string]map[int]bool{}
	for r := range len(s) {
		for i, x := range Rotation(s, r) {
			if pos[x] == nil {
				pos[x] = map[int]bool{}
			}
			pos[x][i] = true
		}
	}
	for _, x := range s {
		if len(pos[x]) != len(s) {
			t.Errorf("%s ran in positions %v, want all %d", x, pos[x], len(s))
		}
	}
	if len(Rotation(nil, 3)) != 0 {
		t.Error("empty rotation")
	}
}

var rate = Metric{Name: "rr_1_c1", Unit: "req/s"}

func sampleResults() *Results {
	r := NewResults(3, []string{"direct", "iptables", "ebpf"})
	// Round-paired values: ebpf/iptables = 1.2, 1.5, 1.1 (unpaired medians would give 1.25).
	for i, v := range []struct{ d, ipt, bpf float64 }{{100, 50, 60}, {90, 40, 60}, {110, 60, 66}} {
		r.Add(i, "direct", rate, v.d)
		r.Add(i, "iptables", rate, v.ipt)
		r.Add(i, "ebpf", rate, v.bpf)
		r.Add(i, "direct", metricConntrack, 0)
		r.Add(i, "iptables", metricConntrack, 1000)
		r.Add(i, "ebpf", metricConntrack, 0)
	}
	lat := Metric{Name: "p99_rr_1_c1", Unit: "us", LowerBetter: true}
	for i := range 3 {
		r.Add(i, "direct", lat, 10)
		r.Add(i, "iptables", lat, 30)
		r.Add(i, "ebpf", lat, 20)
	}
	return r
}

func TestPairedRatio(t *testing.T) {
	r := sampleResults()
	s := r.PairedRatio("ebpf", "iptables", "rr_1_c1")
	if s.N != 3 || math.Abs(s.Median-1.2) > 1e-9 || math.Abs(s.Min-1.1) > 1e-9 || math.Abs(s.Max-1.5) > 1e-9 {
		t.Fatalf("ebpf/iptables = %+v, want median 1.2 min 1.1 max 1.5", s)
	}
	// Zero denominators are skipped, not infinite.
	if s := r.PairedRatio("iptables", "direct", "conntrack_peak"); s.N != 0 {
		t.Fatalf("ratio over zero = %+v, want no rounds", s)
	}
	// A missing round in one scenario drops that round only.
	r.Add(1, "ebpf", rate, math.NaN())
	if s := r.PairedRatio("ebpf", "iptables", "rr_1_c1"); s.N != 2 {
		t.Fatalf("with a missing round N = %d, want 2", s.N)
	}
}

func TestDefaultPairs(t *testing.T) {
	got := DefaultPairs([]string{"direct", "iptables", "ebpf", "iptables-full", "ebpf-full"})
	var names []string
	for _, p := range got {
		names = append(names, p.String())
	}
	want := []string{"ebpf/iptables", "ebpf-full/iptables-full", "iptables/direct", "ebpf/direct", "iptables-full/direct", "ebpf-full/direct"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("pairs %v, want %v", names, want)
	}
	if got := DefaultPairs([]string{"direct"}); len(got) != 0 {
		t.Fatalf("direct alone: %v", got)
	}
}

func TestJSONLinesShape(t *testing.T) {
	r := sampleResults()
	var buf bytes.Buffer
	if err := WriteJSON(&buf, r, DefaultPairs(r.Scenarios())); err != nil {
		t.Fatal(err)
	}
	scenKeys := []string{"max", "median", "metric", "min", "scenario", "unit"}
	ratioKeys := []string{"max", "median", "metric", "min", "ratio"}
	var nScen, nRatio int
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		switch {
		case reflect.DeepEqual(keys, scenKeys):
			nScen++
		case reflect.DeepEqual(keys, ratioKeys):
			nRatio++
			if m["ratio"] == "ebpf/iptables" && m["metric"] == "rr_1_c1" && m["median"].(float64) != 1.2 {
				t.Errorf("ebpf/iptables rr_1_c1 median %v, want 1.2", m["median"])
			}
		default:
			t.Errorf("line %q has keys %v", sc.Text(), keys)
		}
		for _, k := range []string{"median", "min", "max"} {
			if _, ok := m[k].(float64); !ok {
				t.Errorf("line %q: %s is not a number", sc.Text(), k)
			}
		}
	}
	// 3 scenarios x 3 metrics; ratios: ebpf/iptables x3, iptables/direct x2 and ebpf/direct x2 (conntrack 0 skipped).
	if nScen != 9 || nRatio != 7 {
		t.Fatalf("%d scenario lines and %d ratio lines, want 9 and 7:\n%s", nScen, nRatio, buf.String())
	}
}

func TestMarkdownAndTargets(t *testing.T) {
	r := sampleResults()
	rep := &Report{Results: r, Pairs: DefaultPairs(r.Scenarios()), Rounds: 3, Duration: time.Second,
		Info: SysInfo{CPU: "Test CPU", CPUs: 2, Kernel: "6.18", Go: "go1.26"}}
	var buf bytes.Buffer
	if err := WriteMarkdown(&buf, rep, MarkdownOptions{SVG: "bench.svg"}); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		"| metric | unit | direct | iptables | ebpf |",
		"| rr_1_c1 | req/s | 100 [90.0 - 110] | 50.0 [40.0 - 60.0] | 60.0 [60.0 - 66.0] |",
		"| rr_1_c1 | 1.20x [1.10 - 1.50] |",
		"PASS ebpf/iptables rr_1_c1 >= 1.1x",
		"PASS ebpf/iptables p99_rr_1_c1 < 1x",
		"PASS ebpf conntrack_peak == 0",
		"Kernel: 6.18", "Go: go1.26", "![rates and latency percentiles per scenario](bench.svg)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestSVGWellFormed(t *testing.T) {
	r := sampleResults()
	for i := range 3 {
		for _, s := range r.Scenarios() {
			r.Add(i, s, Metric{Name: "p50_rr_1_c1", Unit: "us"}, 5)
			r.Add(i, s, Metric{Name: "p90_rr_1_c1", Unit: "us"}, 8)
			r.Add(i, s, Metric{Name: "connect_c1", Unit: "conn/s"}, 1234.5)
			r.Add(i, s, Metric{Name: "stream_c1", Unit: "Gbit/s"}, 12.5)
		}
	}
	r.Add(0, "ebpf", Metric{Name: "stream_c1"}, math.NaN())
	for _, res := range []*Results{r, NewResults(1, []string{"a<&>"})} {
		var buf bytes.Buffer
		if err := WriteSVG(&buf, res); err != nil {
			t.Fatal(err)
		}
		dec := xml.NewDecoder(&buf)
		var rects, root int
		for {
			tok, err := dec.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("SVG is not well-formed XML: %v", err)
			}
			if se, ok := tok.(xml.StartElement); ok {
				if se.Name.Local == "svg" {
					root++
				}
				if se.Name.Local == "rect" {
					rects++
				}
			}
		}
		if root != 1 || rects < 2 {
			t.Fatalf("SVG has %d svg roots and %d rects", root, rects)
		}
		if strings.Contains(buf.String(), "NaN") {
			t.Fatal("SVG contains NaN")
		}
	}
}

func TestObserveNames(t *testing.T) {
	res := Result{Mode: ModeRR, Ops: 1000, Seconds: 0.5, LatencyNs: Latency{P50: 10000, P90: 20000, P99: 40000}}
	obs := Observe(Test{"rr_1k_c16", ModeRR, 1024, 16}, res, 50e6)
	got := map[string]float64{}
	for _, o := range obs {
		got[o.Metric.Name] = o.Value
	}
	want := map[string]float64{"rr_1k_c16": 2000, "p50_rr_1k_c16": 10, "p90_rr_1k_c16": 20, "p99_rr_1k_c16": 40, "cpu_rr_1k_c16": 50}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("observations %v, want %v", got, want)
	}
	st := Observe(Test{"stream_c1", ModeStream, 0, 1}, Result{Mode: ModeStream, Bytes: 1e9, Seconds: 1}, 0)
	if len(st) != 1 || st[0].Metric.Name != "stream_c1" || st[0].Value != 8 || st[0].Metric.Unit != "Gbit/s" {
		t.Fatalf("stream observations %+v", st)
	}
}

func TestSelectTestsAndScenarios(t *testing.T) {
	ts, err := SelectTests("connect_c1, rr_1_c1")
	if err != nil || len(ts) != 2 || ts[0].Name != "rr_1_c1" || ts[1].Name != "connect_c1" {
		t.Fatalf("SelectTests = %v, %v", ts, err)
	}
	if _, err := SelectTests("rr_2_c1"); err == nil || !strings.Contains(err.Error(), `"rr_2_c1"`) {
		t.Fatalf("unknown test error %v must name the value", err)
	}
	sc, err := ParseScenarios("direct,ebpf,direct")
	if err != nil || len(sc) != 2 || sc[0].Name() != "direct" || sc[1].Name() != "ebpf" {
		t.Fatalf("ParseScenarios = %v, %v", sc, err)
	}
	if _, err := ParseScenarios("nat"); err == nil || !strings.Contains(err.Error(), `"nat"`) {
		t.Fatalf("unknown scenario error %v must name the value", err)
	}
	for _, name := range DefaultScenarios {
		if _, ok := Builtin()[name]; !ok {
			t.Errorf("default scenario %s is not built in", name)
		}
	}
}

// TestClientServerLoopback runs the load generator against the server on 127.0.0.1 (no root needed).
func TestClientServerLoopback(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := ListenTCP(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln) }()
	for _, cfg := range []ClientConfig{
		{Mode: ModeRR, Size: 1024, Conns: 4},
		{Mode: ModeConnect, Size: 1, Conns: 2},
		{Mode: ModeStream, Conns: 1},
	} {
		cfg.Addr, cfg.Duration, cfg.Warmup = ln.Addr().String(), 150*time.Millisecond, 20*time.Millisecond
		var events []string
		res, err := RunClient(ctx, cfg, func(e string) { events = append(events, e) })
		if err != nil {
			t.Fatalf("%s: %v", cfg.Mode, err)
		}
		if !reflect.DeepEqual(events, []string{EventStart, EventEnd}) {
			t.Errorf("%s: events %v", cfg.Mode, events)
		}
		if res.Rate() <= 0 || res.Errors != 0 || res.Seconds < 0.14 {
			t.Errorf("%s: rate %v errors %d (%s) window %vs", cfg.Mode, res.Rate(), res.Errors, res.FirstError, res.Seconds)
		}
		if cfg.Mode != ModeStream && (res.LatencyNs.P50 <= 0 || res.LatencyNs.P99 < res.LatencyNs.P50) {
			t.Errorf("%s: latency %+v", cfg.Mode, res.LatencyNs)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Nothing listening: the client fails with the cause.
	_, err = RunClient(context.Background(), ClientConfig{Mode: ModeRR, Addr: ln.Addr().String(), Size: 1, Conns: 1,
		Duration: 50 * time.Millisecond}, nil)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("client against closed port: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []ClientConfig{
		{Mode: "ping", Addr: "x:1", Size: 1, Conns: 1, Duration: time.Second},
		{Mode: ModeRR, Addr: "x:1", Size: 0, Conns: 1, Duration: time.Second},
		{Mode: ModeRR, Addr: "x:1", Size: 1, Conns: 0, Duration: time.Second},
		{Mode: ModeRR, Addr: "x:1", Size: 1, Conns: 1},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

func TestCheckRelayed(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok := write("ok.json", `{"outbound":{"accepted":12,"active":0},"inbound":{"accepted":0}}`)
	if err := checkRelayed(ok, "client", "outbound"); err != nil {
		t.Errorf("outbound accepted 12: %v", err)
	}
	if err := checkRelayed(ok, "server", "inbound"); err == nil || !strings.Contains(err.Error(), "bypassed") {
		t.Errorf("inbound accepted 0: %v, want a bypass error", err)
	}
	if err := checkRelayed(dir+"/missing.json", "client", "outbound"); err == nil {
		t.Error("missing stats file: no error")
	}
	if err := checkRelayed(write("bad.json", `{"errors":{}}`), "client", "outbound"); err == nil {
		t.Error("stats without the listener: no error")
	}
}

func TestExpandPlaceholders(t *testing.T) {
	p := &podnet.Pod{Name: "mcbx-c", NetnsPath: "/var/run/netns/mcbx-c", CgroupDir: "/cg/mcbx-c", IP: netip.MustParseAddr("198.18.0.1")}
	got := expand([]string{"ebpf", "attach", "--cgroup", "{cgroup}", "--netns", "{netns}", "-i", "*", "{pod}@{ip}"}, p)
	want := []string{"ebpf", "attach", "--cgroup", "/cg/mcbx-c", "--netns", "/var/run/netns/mcbx-c", "-i", "*", "mcbx-c@198.18.0.1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("expand = %v, want %v", got, want)
	}
}
