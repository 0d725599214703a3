package test

import (
	"context"
	"os"
	"os/exec"
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
	out, err := inNS("status", "--pin-dir", pin).Output()
	if err != nil || !strings.HasPrefix(string(out), "mode: ebpf") {
		t.Fatalf("status under ip netns exec: %v\n%s", err, out)
	}
}
