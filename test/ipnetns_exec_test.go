package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestIPNetnsExec: `ip netns exec` remounts /sys in a private mount namespace, hiding /sys/fs/bpf and
// /sys/fs/cgroup from the command it runs. meshcap run that way (attach, the sidecar proxy, status, detach) must
// still use the host's pins and cgroups, or capture would vanish with that namespace and the proxy could not
// register its inbound listener (captured connections would then be refused).
func TestIPNetnsExec(t *testing.T) {
	requireRoot(t)
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if os.Getenv("CI") == "true" {
			t.Fatal("/sys/fs/bpf is not bpffs (.ci/run mounts it)")
		}
		t.Skip("needs the host's bpffs at /sys/fs/bpf")
	}
	pin := "/sys/fs/bpf/meshcap-test-" + randHex(3)
	topo := newTopology(t)
	inNS := func(args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", topo.server.Name, meshcapBin}, args...)...)
	}
	t.Cleanup(func() {
		if out, err := inNS("ebpf", "detach", "--pin-dir", pin).CombinedOutput(); err != nil {
			t.Errorf("detach: %v\n%s", err, out)
		}
		if _, err := os.Stat(pin); !os.IsNotExist(err) {
			t.Errorf("pin dir %s left after detach", pin)
		}
	})
	if out, err := inNS("ebpf", "attach", "--pin-dir", pin, "--cgroup", topo.server.CgroupDir, "-b", "*", "-d", "9090").CombinedOutput(); err != nil {
		t.Fatalf("attach under ip netns exec: %v\n%s", err, out)
	}
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("attach under ip netns exec did not pin on the host's bpffs: %v", err)
	}

	// The sidecar, started after the attach, must register itself through the host's view of the pins.
	ctx, cancel := context.WithCancel(context.Background())
	proxy := exec.CommandContext(ctx, "ip", "netns", "exec", topo.server.Name, meshcapBin, "proxy", "--pin-dir", pin)
	var logs syncBuffer
	proxy.Stdout, proxy.Stderr = &logs, &logs
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = proxy.Wait() })
	waitListening(t, topo.server, 15006)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "registered the inbound listener") {
		if time.Now().After(deadline) {
			t.Fatalf("proxy under ip netns exec did not register its inbound listener:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	res, err := dial(t, topo.client, user, "198.18.0.2:8080", 4096)
	if err != nil || !res.OK || res.Reached != "198.18.0.2:8080" || !strings.HasPrefix(res.Peer, "127.0.0.6:") {
		t.Fatalf("captured inbound port: want the app reached from the sidecar's 127.0.0.6, got %+v %v", res, err)
	}
	res, err = dial(t, topo.client, user, "198.18.0.2:9090", 4096)
	if err != nil || !res.OK || res.Peer != res.Local {
		t.Fatalf("excluded port 9090 must go direct: %+v %v", res, err)
	}
	// Detaching a cgroup that does not exist removes only attachments whose cgroup is gone: from inside the private
	// mount namespace too, where the cgroup tree is only reachable through the host's view.
	// (--netns of another netns, the client pod's, which has no inbound capture: detach --cgroup also removes that.)
	if out, err := inNS("ebpf", "detach", "--pin-dir", pin, "--cgroup", filepath.Join(filepath.Dir(topo.server.CgroupDir), "no-such-pod"),
		"--netns", topo.client.NetnsPath).CombinedOutput(); err != nil {
		t.Fatalf("detach of a missing cgroup: %v\n%s", err, out)
	}
	out, err := inNS("status", "--pin-dir", pin).Output()
	if err != nil || !strings.HasPrefix(string(out), "mode: ebpf") || !strings.Contains(string(out), "1 cgroup(s) with outbound capture") ||
		!strings.Contains(string(out), topo.server.Name) {
		t.Fatalf("status under ip netns exec: want the server pod's attachment intact and named, got %v\n%s", err, out)
	}
}

// TestInitUnderIPNetnsExec: `meshcap init --mode auto` run as a pod's init step through `ip netns exec` (from inside
// the pod's cgroup) finds its cgroup and the pins through the host's mount namespace, chooses eBPF, and capture works.
func TestInitUnderIPNetnsExec(t *testing.T) {
	requireRoot(t)
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if os.Getenv("CI") == "true" {
			t.Fatal("/sys/fs/bpf is not bpffs (.ci/run mounts it)")
		}
		t.Skip("needs the host's bpffs at /sys/fs/bpf")
	}
	pin := "/sys/fs/bpf/meshcap-test-" + randHex(3)
	topo := newTopology(t)
	// Join the pod's cgroup first (a socket's cgroup is fixed at creation), then enter its netns the common way.
	inPod := func(args ...string) ([]byte, error) {
		script := `echo $$ > "$0/cgroup.procs" && exec ip netns exec "$1" "${@:2}"`
		return exec.Command("bash", append([]string{"-c", script, topo.client.CgroupDir, topo.client.Name, meshcapBin}, args...)...).CombinedOutput()
	}
	t.Cleanup(func() {
		if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pin); err != nil {
			t.Errorf("detach: %v\n%s", err, out)
		}
	})
	out, err := inPod("init", "--mode", "auto", "--pin-dir", pin, "-i", "*")
	if err != nil || !strings.Contains(string(out), `"mode": "ebpf"`) {
		t.Fatalf("init --mode auto under ip netns exec: want eBPF chosen, got %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "capture mode chosen") || !strings.Contains(string(out), "reason") {
		t.Errorf("init did not log its choice and reason:\n%s", out)
	}
	out, err = inPod("status", "--pin-dir", pin)
	if err != nil || !strings.Contains(string(out), "mode: ebpf") {
		t.Fatalf("status under ip netns exec: %v\n%s", err, out)
	}
	startProxy(t, topo.client, "--pin-dir", pin)
	res, err := dial(t, topo.client, user, "198.18.1.2:7070", 4096)
	if err != nil || !res.Captured() || res.Reached != "198.18.1.2:7070" {
		t.Fatalf("app traffic after init: want captured to 198.18.1.2:7070, got %+v %v", res, err)
	}
}
