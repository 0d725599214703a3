package matrix

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// Run is what one boot (or the host run) produced.
type Run struct {
	Label    string  // "5.10", "5.10 no-cgroup2", "host"
	WantMode string  // mode the probe must choose; "" = any
	Log      string  // console output holding the markers
	Secs     float64 // wall time of the whole run
	Err      error   // boot failure, timeout, non-zero exit
}

// Summary is one row of the table.
type Summary struct {
	Label, Kernel, Mode string
	Passed              int
	Failed              []string
	Secs                float64
}

// OK is true when nothing failed.
func (s Summary) OK() bool { return len(s.Failed) == 0 }

// Summarize reads a run's markers: every test or check counts once; a probe mode other than the wanted one, a
// missing probe and a run that never printed its "done" marker are failures too.
func Summarize(r Run) Summary {
	s := Summary{Label: r.Label, Secs: r.Secs, Kernel: "?", Mode: "?"}
	done, probed := false, false
	for _, e := range ParseEvents(r.Log) {
		switch e.Step {
		case StepStart:
			s.Kernel = e.Detail
		case StepProbe:
			probed = true
			s.Mode = e.Mode
			if !e.OK {
				s.Failed = append(s.Failed, "probe: "+e.Detail)
			}
		case StepTest, StepCheck:
			if e.OK {
				s.Passed++
			} else {
				s.Failed = append(s.Failed, e.Name)
			}
		case StepDone:
			done = true
		}
	}
	if !probed {
		s.Failed = append(s.Failed, "probe did not run")
	} else if r.WantMode != "" && s.Mode != r.WantMode {
		s.Failed = append(s.Failed, fmt.Sprintf("probe chose %s, want %s", s.Mode, r.WantMode))
	}
	if !done {
		why := "no done marker"
		if r.Err != nil {
			why = r.Err.Error()
		}
		s.Failed = append(s.Failed, "run did not finish: "+why)
	} else if r.Err != nil {
		s.Failed = append(s.Failed, r.Err.Error())
	}
	return s
}

// Table formats the summaries, one row per run, failures named in the last column.
func Table(rows []Summary) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "RUN\tKERNEL\tMODE\tPASSED\tFAILED\tSECONDS\tFAILURES")
	for _, r := range rows {
		fails := strings.Join(r.Failed, "; ")
		if fails == "" {
			fails = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%.0f\t%s\n", r.Label, r.Kernel, r.Mode, r.Passed, len(r.Failed), r.Secs, fails)
	}
	w.Flush()
	return b.String()
}
