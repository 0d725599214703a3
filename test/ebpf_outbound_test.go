package test

// End-to-end tests of eBPF outbound capture: the real `meshcap ebpf attach` CLI on a client pod's cgroup, the real
// `meshcap proxy` (or nettool origdst, a proxy that knows nothing but SO_ORIGINAL_DST) and nettool clients.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/podnet"
)

// ebAttach runs `meshcap ebpf attach` for pod's cgroup.
func ebAttach(t *testing.T, pinRoot string, pod *podnet.Pod, flags ...string) {
	t.Helper()
	args := append([]string{"ebpf", "attach", "--pin-dir", pinRoot, "--cgroup", pod.CgroupDir}, flags...)
	if out, err := runMeshcap(t, args...); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
}

// ebStatus is `meshcap status --json`.
func ebStatus(t *testing.T, pinRoot string) loader.Status {
	t.Helper()
	out, err := exec.Command(meshcapBin, "status", "--json", "--pin-dir", pinRoot).Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st loader.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status output %q: %v", out, err)
	}
	return st
}

// ebDialOutside runs nettool dial in pod's netns but in the test's own cgroup (not the pod's).
func ebDialOutside(t *testing.T, pod *podnet.Pod, addr string) DialResult {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+pod.NetnsPath, nettoolBin, "dial", addr, "-send", "100", "-timeout", "10s").Output()
	var res DialResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("dial outside the cgroup: %v %v %q", err, jerr, out)
	}
	return res
}

// TestEBPFOutboundProxy: attach, the meshcap proxy relays captured connections to their exact original
// destinations (many at once, to different addresses and ports; 32 MiB intact); the client's getpeername shows the
// original destination; the proxy's uid/gid and processes outside the cgroup go direct; without a proxy a captured
// connect fails; after detach the client goes direct again.
func TestEBPFOutboundProxy(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	ebAttach(t, pin, topo.client, "-i", "*")
	// nettool origdst as the proxy: it dials upstream without binding a source address first. (meshcap proxy binds
	// its upstream socket before connect; at this rate that runs into EADDRINUSE on ports still in TIME_WAIT, which
	// is a proxy matter, not a map one.)
	px := startIn(t, topo.client, &podnet.Cred{UID: 1337, GID: 1337}, nettoolBin, "origdst", "127.0.0.1:15001")
	waitListening(t, topo.client, 15001)

	res, err := dial(t, topo.client, nil, "198.18.0.2:8080", 32<<20)
	if err != nil || !res.OK || !res.Captured() || res.Reached != "198.18.0.2:8080" || res.Echoed != 32<<20 {
		t.Fatalf("bulk dial through the proxy: %+v %v", res, err)
	}
	if res.Remote != "198.18.0.2:8080" {
		t.Errorf("client getpeername = %s, want the original destination 198.18.0.2:8080", res.Remote)
	}

	// Concurrent connections to every server address and port, three of each.
	dialAllCaptured(t, topo.client, user, 3, 64<<10)

	for name, cred := range map[string]*podnet.Cred{"uid 1337": uid1337, "gid 1337": gid1337} {
		res, err := dial(t, topo.client, cred, "198.18.1.2:9090", 1000)
		if err != nil || !res.OK || res.Captured() || res.Reached != "198.18.1.2:9090" {
			t.Errorf("%s must go direct: %+v %v", name, res, err)
		}
	}
	if res := ebDialOutside(t, topo.client, "198.18.0.2:7070"); !res.OK || res.Captured() {
		t.Errorf("a process outside the cgroup must go direct: %+v", res)
	}

	st := ebStatus(t, pin)
	if len(st.Attachments) != 1 || st.Attachments[0].CgroupPath != topo.client.CgroupDir {
		t.Fatalf("status: %+v", st)
	}

	// No proxy: a captured connect is refused (it goes to 127.0.0.1:15001), it never silently bypasses.
	px.stop()
	if res, err := dial(t, topo.client, nil, "198.18.0.2:8080", 10); err == nil || res.OK {
		t.Errorf("dial with the proxy stopped must fail: %+v", res)
	} else if !strings.Contains(res.Error, "refused") {
		t.Errorf("dial with the proxy stopped: %q, want connection refused", res.Error)
	}

	if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pin, "--cgroup", topo.client.CgroupDir); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	res, err = dial(t, topo.client, nil, "198.18.0.2:8080", 10)
	if err != nil || !res.OK || res.Captured() {
		t.Errorf("after detach the client must go direct: %+v %v", res, err)
	}
	if st := ebStatus(t, pin); len(st.Attachments) != 0 {
		t.Errorf("status after detach: %+v", st)
	}
}

// TestEBPFOrigdstTool: a third-party transparent proxy that only calls getsockopt(SOL_IP, SO_ORIGINAL_DST) gets
// the exact original destination of every captured connection.
func TestEBPFOrigdstTool(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	ebAttach(t, pin, topo.client, "-i", "198.18.0.0/16", "-p", "15041")
	p := startIn(t, topo.client, &podnet.Cred{UID: 1337, GID: 1337}, nettoolBin, "origdst", "127.0.0.1:15041")
	waitListening(t, topo.client, 15041)
	want := map[string]bool{}
	for _, d := range []string{"198.18.0.2:8080", "198.18.1.2:9090", "198.18.2.2:7070"} {
		res, err := dial(t, topo.client, nil, d, 4096)
		if err != nil || !res.OK || !res.Captured() || res.Reached != d {
			t.Errorf("dial %s through nettool origdst: %+v %v", d, res, err)
		}
		want[d] = true
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := map[string]bool{}
		sc := bufio.NewScanner(strings.NewReader(p.stdout.String()))
		for sc.Scan() {
			var rec map[string]string
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				if rec["error"] != "" {
					t.Fatalf("origdst: %v", rec)
				}
				if rec["local"] != "127.0.0.1:15041" {
					t.Errorf("origdst accepted on %s", rec["local"])
				}
				got[rec["origdst"]] = true
			}
		}
		if len(got) == len(want) {
			for d := range want {
				if !got[d] {
					t.Errorf("origdst never saw %s (saw %v)", d, got)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("origdst records: %q", p.stdout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEBPFReattachReplaces: attaching the same cgroup again with other flags replaces the settings in place.
func TestEBPFReattachReplaces(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	startProxy(t, topo.client, "--no-inbound")
	ebAttach(t, pin, topo.client, "-i", "*")
	if res, err := dial(t, topo.client, nil, "198.18.0.2:9090", 10); err != nil || !res.Captured() {
		t.Fatalf("first attach: %+v %v", res, err)
	}
	ebAttach(t, pin, topo.client, "-i", "*", "-o", "9090")
	if res, err := dial(t, topo.client, nil, "198.18.0.2:9090", 10); err != nil || res.Captured() {
		t.Fatalf("after re-attach with -o 9090: %+v %v", res, err)
	}
	if st := ebStatus(t, pin); len(st.Attachments) != 1 {
		t.Fatalf("status after re-attach: %+v", st)
	}
}

// TestEBPFBadFlags: a bad value is named in the error, the exit code is non-zero and nothing is attached.
func TestEBPFBadFlags(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	pod := newPod(t, "bad")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cgroup", pod.CgroupDir, "-p", "0"}, `"0"`},
		{[]string{"--cgroup", pod.CgroupDir, "-p", "65536"}, `"65536"`},
		{[]string{"--cgroup", pod.CgroupDir, "-i", "10.0.0.0/40"}, `"10.0.0.0/40"`},
		{[]string{"--cgroup", pod.CgroupDir, "-x", "10.0.0.1"}, `"10.0.0.1"`},
		{[]string{"--cgroup", pod.CgroupDir, "-o", "http"}, `"http"`},
		{[]string{"--cgroup", pod.CgroupDir + "-missing"}, pod.CgroupDir + "-missing"},
		{[]string{"--cgroup", os.TempDir()}, "not on a cgroup2 filesystem"},
		{nil, "--cgroup is required"},
	} {
		out, err := runMeshcap(t, append([]string{"ebpf", "attach", "--pin-dir", pin, "-i", "*"}, tc.args...)...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("attach %v: err %v, output %q, want it to name %s", tc.args, err, out, tc.want)
		}
	}
	if st := ebStatus(t, pin); len(st.Attachments) != 0 {
		t.Errorf("something was attached by a failing command: %+v", st)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pin root created by failing commands: %v", err)
	}
}

// ebChildEnv makes the test binary a sequential dialler (ebpfChildDialerMain) inside a pod.
const ebChildEnv = "MESHCAP_E2E_SEQ_DIAL"

// ebpfChildDialerMain: when TestEBPFMapsBounded re-executes the test binary inside the client pod, it makes N short
// connections one after the other, round-robin over the given addresses, and prints how many went through.
// Spreading over several destinations keeps the proxy's upstream connections (whose TIME_WAIT ports cannot be
// reused off loopback) from exhausting the ephemeral port range of one destination.
func ebpfChildDialerMain(spec string) {
	nStr, list, _ := strings.Cut(spec, ",")
	n, _ := strconv.Atoi(nStr)
	addrs := strings.Split(list, ",")
	ok := 0
	failures := map[string]int{}
	buf := make([]byte, 128)
	for i := 0; i < n; i++ {
		addr := addrs[i%len(addrs)]
		c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
		if err != nil {
			failures["dial: "+ebErrKind(err)]++
			continue
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		m, err := c.Read(buf)
		switch {
		case err != nil:
			failures["read: "+ebErrKind(err)]++
		case !strings.HasPrefix(string(buf[:m]), addr+" "):
			failures["greeting: "+string(buf[:m])]++
		default:
			ok++
		}
		c.Close()
	}
	fmt.Printf("ok=%d\n", ok)
	for f, k := range failures {
		fmt.Printf("%d x %s\n", k, f)
	}
	os.Exit(0)
}

// ebErrKind drops the addresses from a net error so that failures aggregate.
func ebErrKind(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// TestEBPFMapsBounded: 20k sequential short captured connections through the meshcap proxy leave the connection
// maps (nearly) empty: entries are freed on close, and the LRU maps bound them anyway.
func TestEBPFMapsBounded(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("20k connections")
	}
	pin := ebPinRoot(t)
	topo := newTopology(t)
	ebAttach(t, pin, topo.client, "-i", "*")
	// nettool origdst as the proxy: it dials upstream without binding a source address first. (meshcap proxy binds
	// its upstream socket before connect; at this rate that runs into EADDRINUSE on ports still in TIME_WAIT, which
	// is a proxy matter, not a map one.)
	px := startIn(t, topo.client, &podnet.Cred{UID: 1337, GID: 1337}, nettoolBin, "origdst", "127.0.0.1:15001")
	waitListening(t, topo.client, 15001)
	// The test binary is root-only readable (0700 dir): fine, the child runs as root, which is captured.
	const n = 20000
	cmd := exec.Command(os.Args[0])
	var addrs []string
	for _, ip := range []string{"198.18.0.2", "198.18.1.2", "198.18.2.2"} {
		for _, port := range serverPorts {
			addrs = append(addrs, fmt.Sprintf("%s:%d", ip, port))
		}
	}
	cmd.Env = append(os.Environ(), ebChildEnv+"="+strconv.Itoa(n)+","+strings.Join(addrs, ","))
	var out strings.Builder
	cmd.Stdout = &out
	if err := topo.client.Start(cmd, nil); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dialler: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), fmt.Sprintf("ok=%d\n", n)) {
		t.Fatalf("dialler: %q, want all %d through the proxy", out.String(), n)
	}
	if strings.Contains(px.stdout.String(), `"error"`) {
		t.Errorf("the proxy failed to get some original destinations")
	}
	st := ebStatus(t, pin)
	if len(st.Attachments) != 1 {
		t.Fatalf("status: %+v", st)
	}
	// The proxy may still be closing the last connections: give it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		counts := map[string]int{}
		for _, m := range ebStatus(t, pin).Attachments[0].Maps {
			counts[m.Name] = m.Entries
		}
		if counts["mc_orig_cookie"] <= 16 && counts["mc_orig_tuple"] <= 16 {
			t.Logf("after %d connections: %v", n, counts)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("maps grew with %d closed connections: %v", n, counts)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
