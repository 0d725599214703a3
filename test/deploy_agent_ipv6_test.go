package test

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshcap/meshcap/pkg/cni"
)

// TestAgentCapturesIPv6Pod: meshcap-cni's ADD for an IPv6-only pod (istio enables IPv6: its first address is IPv6)
// with a node agent running reads the pod's facts in its netns and enrolls it into the agent's eBPF capture with
// IPv6 on, recording the facts; IPv6 outbound and inbound of the pod then go through its sidecar, and the agent's
// reconcile (which rebuilds the policy from the record) keeps it that way.
func TestAgentCapturesIPv6Pod(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	kubepods := kubepodsCgroup(t)
	pod := podUnder(t, kubepods, "v6")
	srv := newPod(t, "srv6")
	linkPods(t, pod, srv)
	for _, a := range []struct{ name, veth, pfx string }{{pod.Name, pod.Veth, client6Prefix}, {srv.Name, srv.Veth, server6Prefix}} {
		if out, err := exec.Command("ip", "-n", a.name, "addr", "add", a.pfx, "dev", a.veth, "nodad").CombinedOutput(); err != nil {
			t.Fatalf("add %s: %v: %s", a.pfx, err, out)
		}
	}
	if out, err := exec.Command("ip", "-n", pod.Name, "addr", "del", clientIP.String(), "dev", pod.Veth).CombinedOutput(); err != nil {
		t.Fatalf("make the pod IPv6-only: %v: %s", err, out)
	}
	stateDir := filepath.Join(t.TempDir(), "cni")
	startAgent(t, "--cgroup", kubepods, "--pin-dir", pin, "--state-dir", stateDir, "--resync", "1s")

	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"mc","type":"meshcap-cni","enroll":"all","state_dir":%q,
		"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":%q,"sandbox":%q}],"ips":[{"address":%q,"interface":0}]}}`,
		stateDir, pod.Veth, pod.NetnsPath, client6Prefix)
	var out, log bytes.Buffer
	p := cni.NewPlugin()
	p.Stdout, p.Log = &out, &log
	args := &skel.CmdArgs{ContainerID: "mcv6" + randHex(4), Netns: pod.NetnsPath, IfName: pod.Veth,
		Args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=v6", StdinData: []byte(conf)}
	if err := p.Add(args); err != nil {
		t.Fatalf("ADD: %v\n%s", err, log.String())
	}
	t.Cleanup(func() { _ = p.Del(args) })
	rec, err := cni.Store{Dir: stateDir}.Get(args.ContainerID)
	if err != nil || rec == nil || rec.Mode != cni.ModeEBPF || !rec.Facts.IPv6 || strings.Contains(log.String(), "NOT enrolled") {
		t.Fatalf("record %+v, %v: want an eBPF enrollment with IPv6 facts\n%s", rec, err, log.String())
	}

	startEcho(t, srv, dst("0.0.0.0", 8080))
	startEcho(t, pod, dst("0.0.0.0", ownPort))
	px := startProxy(t, pod, "--pin-dir", pin)
	check := func(when string) {
		t.Helper()
		out := dst(server6, 8080)
		if res, err := dial(t, pod, user, out, 100); err != nil || !res.Captured() || res.Reached != out || res.Remote != out {
			t.Fatalf("%s: IPv6 outbound: %+v, %v; want captured to %s\n%s", when, res, err, out, px.stderr.String())
		}
		in := dst("["+client6Addr+"]", ownPort)
		if res, err := dial(t, srv, user, in, 100); err != nil || !res.OK || res.Reached != in || !strings.HasPrefix(res.Peer, "[::6]:") {
			t.Fatalf("%s: IPv6 inbound: %+v, %v; want it relayed by the sidecar from [::6]\n%s", when, res, err, px.stderr.String())
		}
	}
	check("after ADD")
	time.Sleep(2500 * time.Millisecond) // two rounds of the agent's 1 s resync, which re-enrolls the pod from its record
	check("after the agent's reconcile")
	px.stop()
	if res, err := dial(t, pod, user, dst(server6, 8080), 10); err == nil || res.OK {
		t.Fatalf("IPv6 outbound with the sidecar stopped: %+v; want it to fail", res)
	}
}
