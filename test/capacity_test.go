package test

// Issue 11, fail closed at capacity: original destinations are never lost while a connection lives, a pod beyond
// --max-connections is refused at connect (never let through uncaptured, never sent to the sidecar without a
// destination), and every path frees what it took.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/podnet"
)

// scrape GETs /metrics at addr inside pod's netns and returns every sample by its series text.
func scrape(t *testing.T, pod *podnet.Pod, addr string) map[string]float64 {
	t.Helper()
	var conn net.Conn
	if err := pod.Do(func() (err error) { conn, err = net.DialTimeout("tcp", addr, 5*time.Second); return err }); err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return scrapeConn(t, conn, addr)
}

// scrapeHost is scrape from the test's own netns.
func scrapeHost(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return scrapeConn(t, conn, addr)
}

func scrapeConn(t *testing.T, conn net.Conn, addr string) map[string]float64 {
	t.Helper()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
	body, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "meshcap_") {
			i := strings.LastIndexByte(line, ' ')
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err == nil {
				out[line[:i]] = v
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("scrape %s: no meshcap metrics in %q", addr, body)
	}
	return out
}

// burstResult mirrors nettool's BurstResult.
type burstResult struct {
	Connected     int      `json:"connected"`
	RefusedEPERM  int      `json:"refused_eperm"`
	ConnectOther  int      `json:"connect_other"`
	OK            int      `json:"ok"`
	WrongDest     int      `json:"wrong_dest"`
	BadPeername   int      `json:"bad_peername"`
	FailedAfter   int      `json:"failed_after"`
	Errors        []string `json:"errors"`
	ConnectErrors []string `json:"connect_errors"`
}

const burstDests = "198.18.0.2:8080,198.18.1.2:9090,198.18.2.2:7070"

// startBurst starts nettool burst in pod as uid/gid 2000; wait for the connects with waitConnected.
func startBurst(t *testing.T, pod *podnet.Pod, n int, goFile string) *proc {
	t.Helper()
	return startIn(t, pod, &podnet.Cred{UID: 2000, GID: 2000}, nettoolBin, "burst", burstDests, "-n", itoa(n), "-go", goFile)
}

func waitConnected(t *testing.T, p *proc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.stderr.String(), "connected ") {
		if time.Now().After(deadline) {
			t.Fatalf("burst: connects did not finish: %s", p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func burstOutcome(t *testing.T, p *proc) burstResult {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(90 * time.Second):
		t.Fatal("burst did not finish")
	}
	var res burstResult
	if err := json.Unmarshal([]byte(p.stdout.String()), &res); err != nil {
		t.Fatalf("burst output %q (%v): %v", p.stdout.String(), p.err, err)
	}
	return res
}

// podStats is the per-pod counters of the only attachment under pinRoot (per-pod mode: key 0).
func podStats(t *testing.T, pinRoot string) loader.CaptureStats {
	t.Helper()
	st := ebStatus(t, pinRoot)
	if len(st.Attachments) != 1 {
		t.Fatalf("status: %d attachments, want 1", len(st.Attachments))
	}
	s, ok := st.Attachments[0].Stats[0]
	if !ok {
		t.Fatalf("status: no counters for the pod: %+v", st.Attachments[0])
	}
	return s
}

// waitStats polls the counters until ok holds (entries are freed by the kernel as sockets finish closing).
func waitStats(t *testing.T, pinRoot string, what string, ok func(loader.CaptureStats) bool) loader.CaptureStats {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := podStats(t, pinRoot)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters never reached %s: %+v", what, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCaptureCapacityFailsClosed: --max-connections 512, 2000 concurrent connects while the sidecar is stopped
// (SIGSTOP), then resumed: exactly 512 connect and every one of them reaches its own destination with the right
// getpeername; the other 1488 are refused at connect (EPERM), none goes anywhere else. After they close, entries in
// use are back to zero. Then connections the sidecar never accepts, and failed connects (no proxy listening;
// loopback down) leave no entry.
func TestCaptureCapacityFailsClosed(t *testing.T) {
	requireRoot(t)
	pin := ebPinRoot(t)
	topo := newTopology(t)
	ebAttach(t, pin, topo.client, "-i", "*", "--max-connections", "512")
	px := startProxy(t, topo.client, "--admin-addr", "127.0.0.1:15000")
	if err := px.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.cmd.Process.Signal(syscall.SIGCONT) })

	goFile := filepath.Join(worldDir(t), "go")
	b := startBurst(t, topo.client, 2000, goFile)
	waitConnected(t, b)
	mid := podStats(t, pin)
	if mid.ConnsInUse != 512 || mid.RefusedFull != 1488 || mid.Captured != 512 || mid.MaxConns != 512 {
		t.Errorf("counters with the sidecar stopped: %+v; want 512 in use, 1488 refused, 512 captured", mid)
	}
	if err := px.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := burstOutcome(t, b)
	if res.Connected != 512 || res.RefusedEPERM != 1488 || res.ConnectOther != 0 || res.OK != 512 ||
		res.WrongDest != 0 || res.BadPeername != 0 || res.FailedAfter != 0 {
		t.Errorf("burst: %+v; want 512 connected and relayed to their own destinations, 1488 refused with EPERM", res)
	}
	waitStats(t, pin, "zero in use", func(s loader.CaptureStats) bool { return s.ConnsInUse == 0 && s.TuplesInUse == 0 })

	// The sidecar's /metrics: its pod's capture counters (read by the unprivileged proxy through getsockopt) and its
	// own, equal to what this test did.
	m := scrape(t, topo.client, "127.0.0.1:15000")
	for series, want := range map[string]float64{
		`meshcap_capture_connections_captured_total{cgroup="",netns_cookie="0",pod=""}`:                   512,
		`meshcap_capture_connections_refused_total{cgroup="",netns_cookie="0",pod=""}`:                    1488,
		`meshcap_capture_connections_in_use{cgroup="",netns_cookie="0",pod=""}`:                           0,
		`meshcap_capture_connections_capacity{cgroup="",netns_cookie="0",pod=""}`:                         512,
		`meshcap_capture_destinations_in_use{cgroup="",netns_cookie="0",pod=""}`:                          0,
		`meshcap_capture_connections_exempt_total{cgroup="",netns_cookie="0",pod="",rule="not_included"}`: 0,
		`meshcap_proxy_connections_relayed_total{direction="outbound"}`:                                   512,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("/metrics %s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	// The proxy's own upstream connects (uid 1337) are exempt by owner, one per relayed connection.
	if got := m[`meshcap_capture_connections_exempt_total{cgroup="",netns_cookie="0",pod="",rule="owner"}`]; got != 512 {
		t.Errorf("exempt by owner = %v, want 512 (the sidecar's upstream connects)", got)
	}

	// Connections the sidecar never accepts: made and closed while it is stopped, then it is killed.
	if err := px.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b = startIn(t, topo.client, &podnet.Cred{UID: 2000, GID: 2000}, nettoolBin, "burst", burstDests, "-n", "100", "-close")
	if res := burstOutcome(t, b); res.Connected != 100 {
		t.Errorf("burst against a stopped sidecar: %+v; want 100 connected", res)
	}
	px.stop()
	waitStats(t, pin, "zero in use", func(s loader.CaptureStats) bool { return s.ConnsInUse == 0 && s.TuplesInUse == 0 })

	// No proxy listening: every captured connect is refused by the kernel; nothing stays.
	b = startBurst(t, topo.client, 50, goFile)
	res = burstOutcome(t, b)
	if res.Connected != 0 || res.ConnectOther != 50 {
		t.Errorf("burst without a proxy: %+v; want 50 refused connects", res)
	}
	s := waitStats(t, pin, "zero in use", func(s loader.CaptureStats) bool { return s.ConnsInUse == 0 && s.TuplesInUse == 0 })
	if s.Captured != 512+100+50 {
		t.Errorf("captured %d, want %d", s.Captured, 512+100+50)
	}

	// Loopback down: the rewritten connect fails before TCP starts (no TCP callback runs); release frees it.
	if out, err := exec.Command("nsenter", "--net="+topo.client.NetnsPath, "ip", "link", "set", "lo", "down").CombinedOutput(); err != nil {
		t.Fatalf("lo down: %v %s", err, out)
	}
	b = startBurst(t, topo.client, 20, goFile)
	res = burstOutcome(t, b)
	if res.Connected != 0 || res.ConnectOther != 20 {
		t.Errorf("burst with loopback down: %+v; want 20 failed connects", res)
	}
	waitStats(t, pin, "zero in use", func(s loader.CaptureStats) bool { return s.ConnsInUse == 0 && s.TuplesInUse == 0 })
}
