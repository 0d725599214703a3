package test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// captureBackend applies and removes capture with the given istio-iptables flags on the client pod.
type captureBackend struct {
	name   string
	apply  func(t *testing.T, client *podnet.Pod, flags []string) error
	remove func(t *testing.T, client *podnet.Pod) error
}

func ebpfBackend(pinDir string) captureBackend {
	return captureBackend{
		name: "ebpf",
		apply: func(t *testing.T, client *podnet.Pod, flags []string) error {
			args := append([]string{"ebpf", "attach", "--pin-dir", pinDir, "--cgroup", client.CgroupDir, "--netns", client.NetnsPath}, flags...)
			if tableResolvConf == "" {
				_, err := runMeshcap(t, args...)
				return err
			}
			_, err := runMeshcapResolv(t, tableResolvConf, nil, args...)
			return err
		},
		remove: func(t *testing.T, client *podnet.Pod) error {
			_, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pinDir, "--cgroup", client.CgroupDir, "--netns", client.NetnsPath)
			return err
		},
	}
}

var iptablesBackend = captureBackend{
	name: "iptables",
	apply: func(t *testing.T, client *podnet.Pod, flags []string) error {
		_, err := runInResolv(t, client, append([]string{"iptables"}, flags...)...)
		return err
	},
	remove: func(t *testing.T, client *podnet.Pod) error {
		// --dual-stack: remove the IPv6 rules of dual-stack rows too (the pod's first address is IPv4).
		_, err := runIn(t, client, nil, meshcapBin, "iptables", "--cleanup-only", "--dual-stack")
		return err
	},
}

// nftablesBackend is `meshcap iptables --native-nftables`: istio's inet tables in one nft transaction.
var nftablesBackend = captureBackend{
	name: "nftables",
	apply: func(t *testing.T, client *podnet.Pod, flags []string) error {
		_, err := runInResolv(t, client, append([]string{"iptables", "--native-nftables"}, flags...)...)
		return err
	},
	remove: func(t *testing.T, client *podnet.Pod) error {
		_, err := runIn(t, client, nil, meshcapBin, "iptables", "--native-nftables", "--cleanup-only")
		return err
	},
}

// TestCaptureTable runs the shared flag table (cases_test.go) against every backend with the real CLI and the
// real meshcap proxy, in dual-stack pods: each backend must capture exactly what istio's rules capture, or (eBPF)
// refuse the flags, or show a gap the row documents. Where nftables mode differs by design (CASES.md
// "Differences"), nftables_diff_test.go asserts the difference.
func TestCaptureTable(t *testing.T) {
	requireRoot(t)
	tableResolvConf = filepath.Join(worldDir(t), "resolv.conf")
	t.Cleanup(func() { tableResolvConf = "" })
	if err := os.WriteFile(tableResolvConf, []byte(tableNameservers), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, b := range []captureBackend{ebpfBackend(ebPinRoot(t)), iptablesBackend, nftablesBackend} {
		if !tableBackendSelected(b.name) {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			topo := newDualStackTopology(t)
			startEcho(t, topo.client, dst("0.0.0.0", ownPort))
			for _, a := range []string{dst("198.18.0.2", 53), dst("198.18.1.2", 53), dst(server6, 53)} {
				startDNSServer(t, topo.server, a, netip.Addr{}) // answers with the query's source port
			}
			startEcho(t, topo.client, dst("[::1]", ownPort6))
			startProxy(t, topo.client, "--resolv-conf", tableResolvConf)
			for _, c := range captureCases {
				t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) { runCaptureCase(t, b, topo.client, c) })
			}
		})
	}
}

func runCaptureCase(t *testing.T, b captureBackend, client *podnet.Pod, c captureCase) {
	for k, v := range c.env {
		t.Setenv(k, v) // inherited by the capture command
	}
	want := c.captured
	err := b.apply(t, client, c.flags)
	defer func() {
		if err := b.remove(t, client); err != nil {
			t.Errorf("remove: %v", err)
		}
	}()
	switch {
	case b.name == "ebpf" && c.ebpf.refused != "":
		if err == nil || !strings.Contains(err.Error(), c.ebpf.refused) || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("ebpf attach %q (env %v): %v; want a refusal naming %q", c.flags, c.env, err, c.ebpf.refused)
		}
		want = false // refused: nothing attached, so nothing captured
	case err != nil:
		t.Fatalf("apply %v: %v", c.flags, err)
	case b.name == "ebpf" && c.ebpf.gap != "":
		t.Logf("documented eBPF gap (docs/ipv6-dns.md): %s", c.ebpf.gap)
		want = !want
	case b.name == "nftables" && c.nftDiff != "":
		t.Logf("documented nftables difference: %s", c.nftDiff)
		want = !want
	}
	if c.dns != "" {
		checkDNSCase(t, client, c, want)
		return
	}
	var extra []string
	if c.family6 {
		extra = append(extra, "-family6")
	}
	if c.bind != "" {
		extra = append(extra, "-bind", c.bind)
	}
	res, err := dial(t, client, c.cred, c.dst, 1000, extra...)
	if err != nil {
		t.Fatalf("dial %s: %v (%+v)", c.dst, err, res)
	}
	reached := c.reached
	if reached == "" {
		reached = c.dst
	}
	if res.Reached != reached {
		t.Fatalf("dial %s reached %s, want %s: wrong original destination", c.dst, res.Reached, reached)
	}
	if res.Captured() != want {
		t.Fatalf("flags %q env %v, dst %s, cred %+v: captured=%v, want %v (client %s, server saw %s)",
			c.flags, c.env, c.dst, c.cred, res.Captured(), want, res.Local, res.Peer)
	}
}

// tableResolvConf is the client pod's resolv.conf while TestCaptureTable runs ("" otherwise): the backends' capture
// commands read it as their /etc/resolv.conf, as istio-iptables reads the pod's.
var tableResolvConf string

// runInResolv runs meshcap in the client pod with tableResolvConf as its /etc/resolv.conf (when set).
func runInResolv(t *testing.T, client *podnet.Pod, args ...string) (string, error) {
	if tableResolvConf == "" {
		return runIn(t, client, nil, meshcapBin, args...)
	}
	bin, argv := inPrivateResolvConf(tableResolvConf, append([]string{meshcapBin}, args...)...)
	return runIn(t, client, nil, bin, argv...)
}

// checkDNSCase asks the DNS server of a dns row; the server answers with the source port it saw the query from, so
// the query went through the sidecar exactly when that is not the client's own port. The answer must come from the
// server asked (the app never sees 15053).
func checkDNSCase(t *testing.T, client *podnet.Pod, c captureCase, want bool) {
	res, err := dnsAsk(t, client, c.cred, c.dst, "row.test.", c.dns)
	if err != nil || res.RCode != "RCodeSuccess" {
		t.Fatalf("dns %s (%s): %+v, %v", c.dst, c.dns, res, err)
	}
	if res.From != unmapped(c.dst) || (res.Peer != "" && unmapped(res.Peer) != unmapped(c.dst)) {
		t.Errorf("dns %s (%s): answer from %s, peer %q: want the server asked", c.dst, c.dns, res.From, res.Peer)
	}
	a, err := netip.ParseAddr(res.A)
	if err != nil {
		t.Fatalf("dns %s: answer %q", c.dst, res.A)
	}
	b := a.As4()
	seen := ":" + strconv.Itoa(int(b[2])<<8|int(b[3]))
	if got := seen != portOf(res.Local); got != want {
		t.Fatalf("flags %q, dns %s (%s), cred %+v: captured=%v, want %v (client %s, server saw port %s)",
			c.flags, c.dst, c.dns, c.cred, got, want, res.Local, seen)
	}
}

// tableBackendsEnv narrows TestCaptureTable to some backends (comma-separated names: ebpf, iptables, nftables).
// The kernel matrix sets it to ebpf: the table's eBPF half is what differs by kernel, and its iptables and nftables
// halves (three quarters of its time under TCG) run in `make test` on the host. Unset: every backend.
const tableBackendsEnv = "MESHCAP_CAPTURE_TABLE_BACKENDS"

func tableBackendSelected(name string) bool {
	v := os.Getenv(tableBackendsEnv)
	return v == "" || slices.Contains(strings.Split(v, ","), name)
}
