package matrix

import (
	"bufio"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// MarkerPrefix starts every result line a run prints (on the VM's serial console, or on stdout on the host).
const MarkerPrefix = "MESHCAP-MATRIX "

// Event steps.
const (
	StepStart = "start" // Detail: uname -r
	StepProbe = "probe" // Mode: the mode `meshcap probe` chose
	StepTest  = "test"  // one Go test
	StepCheck = "check" // one scripted check (the demo, the fallback without cgroup2, ...)
	StepDone  = "done"  // the run finished
)

// Event is one result line.
type Event struct {
	Step   string  `json:"step"`
	Name   string  `json:"name,omitempty"`
	OK     bool    `json:"ok"`
	Mode   string  `json:"mode,omitempty"`
	Detail string  `json:"detail,omitempty"`
	Secs   float64 `json:"secs,omitempty"`
}

// Line is the event as printed: the prefix and one line of JSON.
func (e Event) Line() string {
	b, _ := json.Marshal(e)
	return MarkerPrefix + string(b)
}

// ParseEvents returns the events in a console log, in order. A marker may start mid-line (kernel messages share
// the serial console); lines that do not decode are ignored.
func ParseEvents(log string) []Event {
	var out []Event
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		i := strings.Index(line, MarkerPrefix)
		if i < 0 {
			continue
		}
		var e Event
		if json.Unmarshal([]byte(line[i+len(MarkerPrefix):]), &e) == nil && e.Step != "" {
			out = append(out, e)
		}
	}
	return out
}

// TestResult is one top-level test of a `go test -v` run.
type TestResult struct {
	Name   string
	Status string // PASS, FAIL or SKIP
	Secs   float64
}

// OK is true for PASS only: a skip inside the matrix hides a missing check.
func (r TestResult) OK() bool { return r.Status == "PASS" }

var goTestLine = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)`)

// ParseGoTest returns the top-level test results of `go test -v` output (subtests are indented and ignored).
func ParseGoTest(out string) []TestResult {
	var res []TestResult
	for _, line := range strings.Split(out, "\n") {
		m := goTestLine.FindStringSubmatch(strings.TrimRight(line, "\r"))
		if m == nil {
			continue
		}
		secs, _ := strconv.ParseFloat(m[3], 64)
		res = append(res, TestResult{Name: m[2], Status: m[1], Secs: secs})
	}
	return res
}

// MissingTests returns the names in want that have no result (renamed or never reached).
func MissingTests(want []string, got []TestResult) []string {
	var miss []string
	for _, w := range want {
		if !slices.ContainsFunc(got, func(r TestResult) bool { return r.Name == w }) {
			miss = append(miss, w)
		}
	}
	return miss
}

// RunRegexp is the -test.run pattern that selects exactly the named top-level tests.
func RunRegexp(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = regexp.QuoteMeta(n)
	}
	return fmt.Sprintf("^(%s)$", strings.Join(q, "|"))
}
