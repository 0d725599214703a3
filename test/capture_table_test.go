package test

import (
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
			args := append([]string{"ebpf", "attach", "--pin-dir", pinDir, "--cgroup", client.CgroupDir}, flags...)
			_, err := runMeshcap(t, args...)
			return err
		},
		remove: func(t *testing.T, client *podnet.Pod) error {
			_, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", pinDir, "--cgroup", client.CgroupDir)
			return err
		},
	}
}

var iptablesBackend = captureBackend{
	name: "iptables",
	apply: func(t *testing.T, client *podnet.Pod, flags []string) error {
		_, err := runIn(t, client, nil, meshcapBin, append([]string{"iptables"}, flags...)...)
		return err
	},
	remove: func(t *testing.T, client *podnet.Pod) error {
		_, err := runIn(t, client, nil, meshcapBin, "iptables", "--cleanup-only")
		return err
	},
}

// nftablesBackend is `meshcap iptables --native-nftables`: istio's inet tables in one nft transaction.
var nftablesBackend = captureBackend{
	name: "nftables",
	apply: func(t *testing.T, client *podnet.Pod, flags []string) error {
		_, err := runIn(t, client, nil, meshcapBin, append([]string{"iptables", "--native-nftables"}, flags...)...)
		return err
	},
	remove: func(t *testing.T, client *podnet.Pod) error {
		_, err := runIn(t, client, nil, meshcapBin, "iptables", "--native-nftables", "--cleanup-only")
		return err
	},
}

// TestCaptureTable runs the shared flag table (cases_test.go) against every backend with the real CLI and the
// real meshcap proxy: the same flags must capture exactly the same connections in eBPF, iptables and nftables mode.
// Where nftables mode differs by design (CASES.md "Differences"), nftables_diff_test.go asserts the difference.
func TestCaptureTable(t *testing.T) {
	requireRoot(t)
	for _, b := range []captureBackend{ebpfBackend(ebPinRoot(t)), iptablesBackend, nftablesBackend} {
		t.Run(b.name, func(t *testing.T) {
			topo := newTopology(t)
			startProxy(t, topo.client)
			for _, c := range captureCases {
				t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
					if err := b.apply(t, topo.client, c.flags); err != nil {
						t.Fatalf("apply %v: %v", c.flags, err)
					}
					defer func() {
						if err := b.remove(t, topo.client); err != nil {
							t.Errorf("remove: %v", err)
						}
					}()
					res, err := dial(t, topo.client, c.cred, c.dst, 1000)
					if err != nil {
						t.Fatalf("dial %s: %v (%+v)", c.dst, err, res)
					}
					if res.Reached != c.dst {
						t.Fatalf("dial %s reached %s: wrong original destination", c.dst, res.Reached)
					}
					if res.Captured() != c.captured {
						t.Fatalf("flags %q, dst %s, cred %+v: captured=%v, want %v (client %s, server saw %s)",
							c.flags, c.dst, c.cred, res.Captured(), c.captured, res.Local, res.Peer)
					}
				})
			}
		})
	}
}
