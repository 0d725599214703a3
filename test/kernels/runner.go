package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/test/kernels/matrix"
)

// runner boots kernels and runs the host, one at a time, each under the machine's e2e lock.
type runner struct {
	o          options
	work, logs string // this run's scratch and log directories
	modCache   string // module archives, shared by runs
	common     string // kernel-independent initramfs part
	step       func(string)
}

// bootKernel boots one kernel with the common initramfs plus its modules and summarizes the console.
func (r *runner) bootKernel(label, wantMode string, tree kernelTree, env []string) matrix.Summary {
	mods, err := buildModules(r.modCache, tree)
	if err != nil {
		return matrix.Summarize(matrix.Run{Label: label, WantMode: wantMode, Err: err})
	}
	initrd := filepath.Join(r.work, "initrd-"+tree.version+".cpio")
	if err := concatInitrd(initrd, r.common, mods); err != nil {
		return matrix.Summarize(matrix.Run{Label: label, WantMode: wantMode, Err: err})
	}
	defer os.Remove(initrd)
	spec := bootSpec{vmlinuz: tree.vmlinuz, initrd: initrd, env: env, kvm: r.o.kvm, timeout: r.o.timeout,
		log: filepath.Join(r.logs, logName(label))}
	if r.o.verbose {
		spec.echo = os.Stdout
	}
	r.step(fmt.Sprintf("boot %s (%s), console in %s", label, tree.version, spec.log))
	unlock, err := lock(r.o.lock)
	if err != nil {
		return matrix.Summarize(matrix.Run{Label: label, WantMode: wantMode, Err: err})
	}
	start := time.Now()
	log, err := boot(spec)
	unlock()
	return r.summarize(matrix.Run{Label: label, WantMode: wantMode, Log: log, Err: err, Secs: time.Since(start).Seconds()}, spec.log)
}

// hostRun runs the guest mode on this machine's kernel, directly.
func (r *runner) hostRun(bins string, cfg guestConfig) matrix.Summary {
	wd, err := os.Getwd()
	if err != nil {
		return matrix.Summarize(matrix.Run{Label: "host", Err: err})
	}
	cfg.BinDir, cfg.TestDir = bins, filepath.Join(wd, "test")
	data, _ := json.Marshal(cfg)
	conf := filepath.Join(r.work, "host.json")
	logPath := filepath.Join(r.logs, "host.log")
	run := matrix.Run{Label: "host", WantMode: "ebpf"}
	if err := os.WriteFile(conf, data, 0o644); err != nil {
		run.Err = err
		return matrix.Summarize(run)
	}
	f, err := os.Create(logPath)
	if err != nil {
		run.Err = err
		return matrix.Summarize(run)
	}
	defer f.Close()
	r.step("run on the host kernel, log in " + logPath)
	unlock, err := lock(r.o.lock)
	if err != nil {
		run.Err = err
		return matrix.Summarize(run)
	}
	defer unlock()
	var buf strings.Builder
	var w io.Writer = io.MultiWriter(&buf, f)
	if r.o.verbose {
		w = io.MultiWriter(&buf, f, os.Stdout)
	}
	start := time.Now()
	cmd := exec.Command(filepath.Join(bins, "matrix"), "guest", "-config", conf)
	cmd.Stdout, cmd.Stderr = w, w
	run.Err = cmd.Run()
	run.Log, run.Secs = buf.String(), time.Since(start).Seconds()
	return r.summarize(run, logPath)
}

// summarize reads the markers and, for a failed run, prints the end of its console.
func (r *runner) summarize(run matrix.Run, logPath string) matrix.Summary {
	s := matrix.Summarize(run)
	r.step(fmt.Sprintf("%s: %d passed, %d failed in %.0fs", run.Label, s.Passed, len(s.Failed), run.Secs))
	if !s.OK() && !r.o.verbose {
		lines := strings.Split(strings.TrimRight(run.Log, "\n"), "\n")
		if len(lines) > 80 {
			lines = lines[len(lines)-80:]
		}
		fmt.Printf("---- %s: last lines of %s\n%s\n----\n", run.Label, logPath, strings.Join(lines, "\n"))
	}
	return s
}

func logName(label string) string { return strings.ReplaceAll(label, " ", "-") + ".log" }

// lock takes the machine-wide e2e lock (flock), waiting for it.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
