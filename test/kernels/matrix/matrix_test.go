package matrix

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestPackagesPicksNewest(t *testing.T) {
	names := []string{"linux-image-5.10.0-9-amd64", "linux-image-5.10.0-32-amd64", "linux-image-5.10.0-30-amd64",
		"linux-image-5.10.0-32-cloud-amd64", "linux-image-5.10.0-32-amd64-dbg", "linux-headers-5.10.0-40-amd64"}
	got, err := Kernels[0].Packages(names)
	if err != nil || !slices.Equal(got, []string{"linux-image-5.10.0-32-amd64"}) {
		t.Fatalf("5.10: %v %v", got, err)
	}
	sid := []string{"linux-binary-7.2.9+deb14-amd64", "linux-binary-7.2.13+deb14-amd64", "linux-binary-7.2.13+deb14-rt-amd64",
		"linux-modules-7.2.13+deb14-amd64"}
	got, err = Kernels[3].Packages(sid)
	if want := []string{"linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("7.2: %v %v, want %v", got, err, want)
	}
	if _, err := Kernels[1].Packages(names); err == nil || !strings.Contains(err.Error(), "bookworm") {
		t.Fatalf("no match: %v", err)
	}
}

func TestSelectKernels(t *testing.T) {
	ks, err := SelectKernels("6.12, 5.10")
	if err != nil || len(ks) != 2 || ks[0].Name != "6.12" || ks[1].Name != "5.10" {
		t.Fatalf("%v %v", ks, err)
	}
	if all, _ := SelectKernels("all"); len(all) != len(Kernels) {
		t.Fatalf("all: %d kernels", len(all))
	}
	if _, err := SelectKernels("4.19"); err == nil || !strings.Contains(err.Error(), `"4.19"`) {
		t.Fatalf("unknown kernel: %v", err)
	}
}

func TestParseGoTest(t *testing.T) {
	out := "=== RUN   TestA\n--- PASS: TestA (1.50s)\n=== RUN   TestB\n    --- PASS: TestB/sub (0.01s)\n--- FAIL: TestB (2.00s)\n" +
		"--- SKIP: TestC (0.00s)\n    x.go:1: needs root\nFAIL\n"
	got := ParseGoTest(out)
	want := []TestResult{{"TestA", "PASS", 1.5}, {"TestB", "FAIL", 2}, {"TestC", "SKIP", 0}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v", got)
	}
	if got[2].OK() || !got[0].OK() {
		t.Fatal("a skip must not count as passed")
	}
	if miss := MissingTests([]string{"TestA", "TestD"}, got); !slices.Equal(miss, []string{"TestD"}) {
		t.Fatalf("missing %v", miss)
	}
	if re := RunRegexp([]string{"TestA", "TestB.x"}); re != `^(TestA|TestB\.x)$` {
		t.Fatalf("regexp %s", re)
	}
}

func TestEventsRoundTripThroughANoisyConsole(t *testing.T) {
	evs := []Event{{Step: StepStart, OK: true, Detail: "5.10.0-32-amd64"}, {Step: StepProbe, OK: true, Mode: "iptables"},
		{Step: StepTest, Name: "TestA", OK: true, Secs: 3}, {Step: StepCheck, Name: "demo", Detail: "exit 1"}}
	log := "[    1.0] random: crng init done\r\n" + evs[0].Line() + "\r\n" + "[ 2.1] veth: x" + evs[1].Line() + "\n" +
		evs[2].Line() + "\n" + MarkerPrefix + `{"step":"test","name":"TestTrunc` + "\n" + evs[3].Line() + "\n"
	got := ParseEvents(log)
	if !slices.Equal(got, evs) {
		t.Fatalf("got %+v", got)
	}
}

func TestSummarize(t *testing.T) {
	lines := []string{Event{Step: StepStart, Detail: "6.1.0-50-amd64"}.Line(), Event{Step: StepProbe, OK: true, Mode: "ebpf"}.Line(),
		Event{Step: StepTest, Name: "TestA", OK: true}.Line(), Event{Step: StepTest, Name: "TestB"}.Line(),
		Event{Step: StepCheck, Name: "demo", OK: true}.Line()}
	full := strings.Join(append(lines, Event{Step: StepDone, OK: true}.Line()), "\n")

	s := Summarize(Run{Label: "6.1", WantMode: "ebpf", Log: full, Secs: 42})
	if s.Kernel != "6.1.0-50-amd64" || s.Mode != "ebpf" || s.Passed != 2 || !slices.Equal(s.Failed, []string{"TestB"}) || s.OK() {
		t.Fatalf("%+v", s)
	}
	s = Summarize(Run{Label: "6.1", WantMode: "iptables", Log: full})
	if !slices.Contains(s.Failed, "probe chose ebpf, want iptables") {
		t.Fatalf("wrong mode not a failure: %+v", s)
	}
	// No done marker: the VM died or timed out.
	s = Summarize(Run{Label: "6.1", Log: strings.Join(lines[:2], "\n"), Err: errors.New("timed out after 10m")})
	if !slices.Contains(s.Failed, "run did not finish: timed out after 10m") {
		t.Fatalf("unfinished run: %+v", s)
	}
	if s = Summarize(Run{Label: "x", Log: "kernel panic"}); len(s.Failed) != 2 || s.Mode != "?" {
		t.Fatalf("empty log: %+v", s)
	}
	tab := Table([]Summary{Summarize(Run{Label: "6.1", WantMode: "ebpf", Log: full, Secs: 42})})
	if !strings.Contains(tab, "6.1.0-50-amd64") || !strings.Contains(tab, "TestB") || !strings.Contains(tab, "42") {
		t.Fatalf("table:\n%s", tab)
	}
}

func TestDebianMirror(t *testing.T) {
	deb822 := "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian-security\n\nTypes: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
	if got := DebianMirror(deb822); got != "http://mirror.example/debian" {
		t.Fatalf("deb822: %s", got)
	}
	if got := DebianMirror("deb [arch=amd64 signed-by=/k] https://m.example/debian bookworm main\n"); got != "https://m.example/debian" {
		t.Fatalf("one-line: %s", got)
	}
	if got := DebianMirror("deb https://packages.cloud.google.com/apt cloud-sdk main\n"); got != DefaultMirror {
		t.Fatalf("none: %s", got)
	}
}
