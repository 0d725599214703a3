package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/test/kernels/matrix"
)

// guestConfig is what the guest mode runs; written into the initramfs (or a temp file for the host run).
type guestConfig struct {
	Tests   []string // e2e tests (top-level names) to run; ["all"]: every test of the binary but Skip
	Skip    []string
	BinDir  string // prebuilt binaries: meshcap, nettool, e2e.test, CNI plugins
	TestDir string // working directory of the test binary (the test package's directory)
}

// guest runs the selection on the kernel it runs on and prints one marker per result. Every failure is a
// marker with ok=false; the run always ends with the done marker, so the host can tell a finished run from a
// VM that died.
type guest struct {
	cfg guestConfig
	vm  bool // inside the matrix VM: may change kernel-wide settings (module autoload)
	out io.Writer
}

func guestMain(args []string) int {
	fs := flag.NewFlagSet("guest", flag.ContinueOnError)
	config := fs.String("config", "", "guest configuration (JSON)")
	vm := fs.Bool("vm", false, "running as the matrix VM's init: kernel-wide changes are allowed")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	data, err := os.ReadFile(*config)
	var cfg guestConfig
	if err == nil {
		err = json.Unmarshal(data, &cfg)
	}
	g := &guest{cfg: cfg, vm: *vm, out: os.Stdout}
	if err != nil {
		g.emit(matrix.Event{Step: matrix.StepCheck, Name: "guest config", Detail: err.Error()})
	} else {
		g.run()
	}
	g.emit(matrix.Event{Step: matrix.StepDone, OK: true})
	return 0
}

func (g *guest) emit(e matrix.Event) { fmt.Fprintln(g.out, "\n"+e.Line()) }

func (g *guest) bin(name string) string { return filepath.Join(g.cfg.BinDir, name) }

func (g *guest) run() {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	g.emit(matrix.Event{Step: matrix.StepStart, OK: true, Detail: unix.ByteSliceToString(uts.Release[:])})
	mode := g.probe()
	if _, err := hostfs.Cgroup2Root(); err != nil {
		// A cgroup-v1-only host: eBPF capture has nothing to attach to; istio's rules must take over.
		g.check("init --mode auto without cgroup2: iptables, exact original destination", func() error {
			return g.autoRelay("iptables")
		})
		return
	}
	g.tests(g.cfg.Tests)
	if g.vm {
		// After the tests: they have loaded (by autoload) every module the test itself needs besides capture,
		// such as nf_tables for its iptables-nft step, so only the sock_diag modules are really missing here.
		g.check("inbound capture with module autoload off", g.inboundWithoutAutoload)
	}
	g.check("init --mode auto: probe's mode, exact original destination", func() error { return g.autoRelay(mode) })
	g.check("meshcap demo", g.demo)
}

// check runs fn and emits its result.
func (g *guest) check(name string, fn func() error) {
	start := time.Now()
	err := fn()
	e := matrix.Event{Step: matrix.StepCheck, Name: name, OK: err == nil, Secs: time.Since(start).Seconds()}
	if err != nil {
		e.Detail = err.Error()
		fmt.Fprintf(g.out, "CHECK FAILED %s: %v\n", name, err)
	}
	g.emit(e)
}

// probe runs `meshcap probe --json` and emits the mode it chose.
func (g *guest) probe() string {
	out, err := g.command(2*time.Minute, g.bin("meshcap"), "probe", "--json")
	var res struct {
		Decision struct{ Mode, Reason string }
	}
	if err == nil {
		err = json.Unmarshal([]byte(out), &res)
	}
	if err != nil {
		g.emit(matrix.Event{Step: matrix.StepProbe, Detail: err.Error()})
		return ""
	}
	fmt.Fprintf(g.out, "probe: mode %s (%s)\n", res.Decision.Mode, res.Decision.Reason)
	g.emit(matrix.Event{Step: matrix.StepProbe, OK: true, Mode: res.Decision.Mode, Detail: res.Decision.Reason})
	return res.Decision.Mode
}

// command runs a program with a timeout; its output goes to the console too.
func (g *guest) command(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&buf, g.out), g.out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return buf.String(), err
}

// goTests runs the e2e test binary on the named tests as CI would (a skip fails) and returns the results and
// the names that produced none.
func (g *guest) goTests(names []string) ([]matrix.TestResult, []string, error) {
	cmd := g.testCmd("-test.run", matrix.RunRegexp(names), "-test.v", "-test.count=1", "-test.timeout=20m")
	var buf bytes.Buffer
	cmd.Stdout = io.MultiWriter(&buf, g.out)
	cmd.Stderr = cmd.Stdout
	err := cmd.Run()
	res := matrix.ParseGoTest(buf.String())
	return res, matrix.MissingTests(names, res), err
}

// testCmd is the e2e test binary as CI runs it (CI=true: a skip fails), with the prebuilt binaries.
func (g *guest) testCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(g.bin("e2e.test"), args...)
	cmd.Dir = g.cfg.TestDir
	// The capture table's eBPF half only: what differs by kernel (its iptables/nftables halves run in make test).
	cmd.Env = append(os.Environ(), "CI=true", "MESHCAP_E2E_BIN_DIR="+g.cfg.BinDir, "PATH="+os.Getenv("PATH")+":"+g.cfg.BinDir,
		"MESHCAP_CAPTURE_TABLE_BACKENDS=ebpf")
	return cmd
}

// tests runs the selected e2e tests and emits one marker per test.
func (g *guest) tests(names []string) {
	if len(names) == 1 && names[0] == "all" {
		out, err := g.testCmd("-test.list", ".").Output()
		if err != nil {
			g.emit(matrix.Event{Step: matrix.StepTest, Name: "e2e.test -test.list", Detail: err.Error()})
			return
		}
		names = slices.DeleteFunc(strings.Fields(string(out)), func(n string) bool { return slices.Contains(g.cfg.Skip, n) })
	}
	if len(names) == 0 {
		return
	}
	res, missing, err := g.goTests(names)
	for _, r := range res {
		g.emit(matrix.Event{Step: matrix.StepTest, Name: r.Name, OK: r.OK(), Secs: r.Secs, Detail: r.Status})
	}
	for _, m := range missing {
		g.emit(matrix.Event{Step: matrix.StepTest, Name: m, Detail: fmt.Sprintf("no result (test binary: %v)", err)})
	}
}
