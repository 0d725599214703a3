package podnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted (as iproute2 does).
const NetnsDir = "/var/run/netns"

// Pod is a network namespace plus a cgroup v2 directory.
type Pod struct {
	Name      string     // netns and cgroup name
	NetnsPath string     // /var/run/netns/<Name>
	CgroupDir string     // <cgroup2>/meshcap.slice/<Name>
	IP        netip.Addr // address on Veth, set by Link
	Veth      string     // the pod's end of its veth pair, set by Link
}

// Cred is the uid/gid a process started in a pod runs as.
type Cred struct{ UID, GID uint32 }

// NewPod creates the netns (loopback up) and the cgroup. On error nothing is left behind.
func NewPod(name string) (*Pod, error) {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return nil, fmt.Errorf("invalid pod name %q", name)
	}
	p := &Pod{Name: name, NetnsPath: filepath.Join(NetnsDir, name)}
	if _, err := os.Stat(p.NetnsPath); err == nil {
		return nil, fmt.Errorf("create pod %s: netns %s already exists", name, p.NetnsPath)
	}
	if err := run("ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	if err := run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		_ = p.Close()
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	dir, err := makeCgroup(name)
	if err != nil {
		_ = p.Close()
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	p.CgroupDir = dir
	return p, nil
}

// Close kills processes left in the pod's cgroup, then removes the cgroup and the netns. Idempotent.
func (p *Pod) Close() error {
	var errs []error
	if err := removeCgroup(p.CgroupDir); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat(p.NetnsPath); err == nil {
		if err := run("ip", "netns", "del", p.Name); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", p.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Link joins a and b with a veth pair, gives each end its address and routes 198.18.0.0/15 over it.
func Link(a, b *Pod, aIP, bIP netip.Prefix) error {
	va, vb := vethName(a.Name), vethName(b.Name)
	if err := run("ip", "link", "add", va, "netns", a.Name, "type", "veth", "peer", "name", vb, "netns", b.Name); err != nil {
		return fmt.Errorf("link %s-%s: %w", a.Name, b.Name, err)
	}
	for _, s := range []struct {
		p    *Pod
		veth string
		ip   netip.Prefix
	}{{a, va, aIP}, {b, vb, bIP}} {
		if err := run("ip", "-n", s.p.Name, "addr", "add", s.ip.String(), "dev", s.veth); err != nil {
			return fmt.Errorf("link %s: %w", s.p.Name, err)
		}
		if err := run("ip", "-n", s.p.Name, "link", "set", s.veth, "up"); err != nil {
			return fmt.Errorf("link %s: %w", s.p.Name, err)
		}
		// Extra server addresses of the peer live anywhere in 198.18.0.0/15: reach them on-link.
		if err := run("ip", "-n", s.p.Name, "route", "add", "198.18.0.0/15", "dev", s.veth); err != nil {
			return fmt.Errorf("link %s: %w", s.p.Name, err)
		}
		s.p.IP, s.p.Veth = s.ip.Addr(), s.veth
	}
	return nil
}

// AddAddr adds another address to the pod's veth (a second server IP, for example).
func (p *Pod) AddAddr(pfx netip.Prefix) error {
	if p.Veth == "" {
		return fmt.Errorf("add address %s to %s: pod has no veth (call Link first)", pfx, p.Name)
	}
	if err := run("ip", "-n", p.Name, "addr", "add", pfx.String(), "dev", p.Veth); err != nil {
		return fmt.Errorf("add address %s to %s: %w", pfx, p.Name, err)
	}
	return nil
}

// Do runs fn on a locked OS thread that has entered the pod's netns, then returns the thread to its own netns.
func (p *Pod) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(p.NetnsPath)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", p.NetnsPath, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", p.NetnsPath, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime destroys it when this goroutine ends.
		return errors.Join(fnErr, fmt.Errorf("leave netns %s: %w", p.NetnsPath, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Listen opens a TCP listener inside the pod's netns (MPTCP off, so BPF socket maps accept it).
func (p *Pod) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := p.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s in %s: %w", addr, p.Name, err)
	}
	return ln, nil
}

// Start starts cmd inside the pod: its netns, its cgroup (from the first instruction), and cred when given.
func (p *Pod) Start(cmd *exec.Cmd, cred *Cred) error {
	cg, err := os.Open(p.CgroupDir)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", p.CgroupDir, err)
	}
	defer cg.Close()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	if cred != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: []uint32{}}
	}
	// The child inherits the netns of the thread that forks it.
	if err := p.Do(cmd.Start); err != nil {
		return fmt.Errorf("start %s in %s: %w", cmd.Path, p.Name, err)
	}
	return nil
}

// vethName derives an interface name (at most 15 bytes) from a pod name.
func vethName(pod string) string {
	name := "v" + pod
	if len(name) > 15 {
		name = "v" + pod[len(pod)-14:]
	}
	return name
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
