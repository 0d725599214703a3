package test

import (
	"os"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// TestPodHarness checks the harness itself: pods reach each other over the veth, a process started in a pod runs
// in its cgroup with the requested uid, and Close removes the netns and the cgroup.
func TestPodHarness(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	res, err := dial(t, topo.client, &podnet.Cred{UID: 2000, GID: 2000}, "198.18.1.2:9090", 4096)
	if err != nil {
		t.Fatalf("direct dial: %v", err)
	}
	if !res.OK || res.Reached != "198.18.1.2:9090" || res.Captured() {
		t.Fatalf("direct dial: got %+v, want an uncaptured echo from 198.18.1.2:9090", res)
	}
	p := startIn(t, topo.client, &podnet.Cred{UID: 2000, GID: 2000}, "sleep", "30")
	procs, err := os.ReadFile(topo.client.CgroupDir + "/cgroup.procs")
	if err != nil {
		t.Fatal(err)
	}
	if want := itoa(p.cmd.Process.Pid); !containsLine(string(procs), want) {
		t.Fatalf("pid %s not in %s/cgroup.procs: %q", want, topo.client.CgroupDir, procs)
	}
	status, _ := os.ReadFile("/proc/" + itoa(p.cmd.Process.Pid) + "/status")
	if !containsLine(string(status), "Uid:\t2000\t2000\t2000\t2000") {
		t.Fatalf("child not running as uid 2000: %s", status)
	}

	pod := newPod(t, "tmp")
	if err := pod.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pod.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	for _, path := range []string{pod.NetnsPath, pod.CgroupDir} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Close", path)
		}
	}
}
