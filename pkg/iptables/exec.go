package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
)

// Runner runs one external command to completion. stdin may be empty. On failure the error carries the
// command's stderr.
type Runner interface {
	Run(ctx context.Context, stdin string, name string, args ...string) (stdout string, err error)
}

// ExecRunner runs commands with os/exec, optionally behind a prefix such as
// []string{"nsenter", "--net=/var/run/netns/pod"} to run them inside another network namespace.
type ExecRunner struct {
	Prefix []string
}

// NetnsRunner returns an ExecRunner whose commands run in the network namespace at path ("" = current one).
func NetnsRunner(path string) ExecRunner {
	if path == "" {
		return ExecRunner{}
	}
	return ExecRunner{Prefix: []string{"nsenter", "--net=" + path}}
}

// Run implements Runner.
func (r ExecRunner) Run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	argv := append(append(append([]string{}, r.Prefix...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), &CommandError{Cmd: strings.Join(append([]string{name}, args...), " "), Err: err, Stderr: msg}
	}
	return stdout.String(), nil
}

// CommandError is a failed external command.
type CommandError struct {
	Cmd    string
	Err    error
	Stderr string
}

func (e *CommandError) Error() string {
	if e.Stderr != "" {
		return fmt.Sprintf("%s: %v: %s", e.Cmd, e.Err, e.Stderr)
	}
	return fmt.Sprintf("%s: %v", e.Cmd, e.Err)
}

func (e *CommandError) Unwrap() error { return e.Err }

// InNetns runs fn on a locked OS thread inside the network namespace at path ("" = run fn here).
// Sockets fn creates stay in that namespace.
func InNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %q: %w", path, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %q: %w", path, err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with the goroutine instead of serving others in the wrong netns.
		return fmt.Errorf("return from netns %q: %w", path, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// FactsIn gathers the host facts of c inside the network namespace at path ("" = the current one), as
// istio-iptables does when it runs there: its interface addresses, and /etc/resolv.conf of this process.
func FactsIn(path string, c capture.Config) (capture.HostFacts, error) {
	var f capture.HostFacts
	err := InNetns(path, func() (err error) {
		f, err = capture.HostSource{}.Facts(c)
		return err
	})
	return f, err
}

// EBPFUnsupportedIn is capture.EBPFUnsupported with the host facts of the network namespace at path. A netns
// without any non-loopback address has no IPv6 to capture: there istio-iptables fails, and eBPF capture misses
// nothing.
func EBPFUnsupportedIn(path string, c capture.Config) ([]string, error) {
	facts, err := podFactsIn(path, c)
	if err != nil {
		return nil, err
	}
	return c.EBPFUnsupported(facts), nil
}

// EBPFPolicyIn is p (c's policy) with the facts of the network namespace at path that the eBPF programs need
// (capture.Policy.WithHostFacts: the pod's own addresses). Every eBPF front end calls it with the pod's netns.
func EBPFPolicyIn(path string, c capture.Config, p capture.Policy) (capture.Policy, error) {
	facts, err := podFactsIn(path, c)
	if err != nil {
		return p, err
	}
	return p.WithHostFacts(facts), nil
}

// podFactsIn is FactsIn where a netns without a non-loopback address (istio-iptables fails there) is no error.
func podFactsIn(path string, c capture.Config) (capture.HostFacts, error) {
	facts, err := FactsIn(path, c)
	if err != nil && !errors.Is(err, capture.ErrNoLocalAddress) {
		return facts, fmt.Errorf("host facts of netns %q: %w", path, err)
	}
	return facts, nil
}
