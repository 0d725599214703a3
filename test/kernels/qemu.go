package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// bootSpec is one VM run.
type bootSpec struct {
	vmlinuz, initrd string
	env             []string // KEY=VALUE on the kernel command line: the kernel hands them to /init
	kvm             bool
	timeout         time.Duration
	log             string    // console log file
	echo            io.Writer // also copy the console here (nil: no)
}

// qemuArgs is the command line: TCG by default (KVM hung at boot on this kind of machine), 2 GiB, 2 vCPUs, the
// serial console on stdio, no NIC, no reboot (the guest's poweroff or a panic ends QEMU).
func qemuArgs(s bootSpec) []string {
	accel := "tcg"
	if s.kvm {
		accel = "kvm"
	}
	cmdline := append([]string{"console=ttyS0", "loglevel=1", "panic=-1"}, s.env...)
	return []string{"-accel", accel, "-m", "2048", "-smp", "2", "-nographic", "-no-reboot", "-nic", "none",
		"-kernel", s.vmlinuz, "-initrd", s.initrd, "-append", strings.Join(cmdline, " ")}
}

// boot runs QEMU until the guest powers off or the timeout, and returns the console output.
func boot(s bootSpec) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	f, err := os.Create(s.log)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var buf bytes.Buffer
	w := io.MultiWriter(&buf, f)
	if s.echo != nil {
		w = io.MultiWriter(&buf, f, s.echo)
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", qemuArgs(s)...)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out after %s", s.timeout)
	} else if err != nil {
		err = fmt.Errorf("qemu: %w", err)
	}
	return buf.String(), err
}
