package test

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshcap/meshcap/pkg/cni"
	"github.com/meshcap/meshcap/pkg/podnet"
)

// TestCNIFallbackIPTablesForIPv6Pod: meshcap-cni's ADD for a pod that eBPF capture cannot fully cover (TPROXY
// interception) where istio enables IPv6 (its first address is IPv6: a veth pair inside it, IPv6 only) does not
// enroll it into eBPF capture: it applies istio's rules (IPv4 and IPv6, from the facts of the pod's netns) there,
// records the pod as iptables mode and says why; DEL removes the rules. (IPv6 alone is captured by eBPF: see
// pkg/cni's TestPluginEnrollsIPv6Pod and test/deploy_agent_ipv6_test.go.)
func TestCNIFallbackIPTablesForIPv6Pod(t *testing.T) {
	requireRoot(t)
	pod := newPod(t, "cni6")
	for _, args := range [][]string{
		{"link", "add", "d0", "type", "veth", "peer", "name", "d1"},
		{"addr", "add", "fd00:198:19::5/64", "dev", "d0", "nodad"},
		{"link", "set", "d0", "up"}, {"link", "set", "d1", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", pod.Name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	stateDir := filepath.Join(t.TempDir(), "cni")
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"mc","type":"meshcap-cni","enroll":"all","state_dir":%q,
		"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"d0","sandbox":%q}],"ips":[{"address":"fd00:198:19::5/64","interface":0}]}}`,
		stateDir, pod.NetnsPath)
	var out, log bytes.Buffer
	p := cni.NewPlugin()
	p.Stdout, p.Log = &out, &log
	args := &skel.CmdArgs{ContainerID: "mcfallback" + randHex(4), Netns: pod.NetnsPath, IfName: "d0",
		Args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=v6;MESHCAP_ISTIO_INBOUND_INTERCEPTION_MODE=TPROXY", StdinData: []byte(conf)}
	if err := p.Add(args); err != nil {
		t.Fatalf("ADD: %v\n%s", err, log.String())
	}
	t.Logf("meshcap-cni: %s", log.String())
	if !strings.Contains(log.String(), "NOT enrolled into eBPF capture") || !strings.Contains(log.String(), "TPROXY") {
		t.Errorf("ADD did not say why the pod is not in eBPF capture: %q", log.String())
	}
	rec, err := cni.Store{Dir: stateDir}.Get(args.ContainerID)
	if err != nil || rec == nil || rec.Mode != cni.ModeIPTables {
		t.Fatalf("record %+v, %v: want mode %q", rec, err, cni.ModeIPTables)
	}
	for _, save := range []string{"iptables", "ip6tables"} {
		if rules := istioRules(t, pod, save); !strings.Contains(rules, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
			t.Errorf("%s rules after ADD lack the outbound redirect:\n%s", save, rules)
		}
	}
	if err := p.Del(args); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	for _, save := range []string{"iptables", "ip6tables"} {
		if rules := istioRules(t, pod, save); strings.Contains(rules, "ISTIO_") {
			t.Errorf("%s rules left after DEL:\n%s", save, rules)
		}
	}
}

// istioRules returns the nat and mangle rules of one family in pod, from whichever iptables variant has them.
func istioRules(t *testing.T, pod *podnet.Pod, family string) string {
	t.Helper()
	var all string
	for _, bin := range []string{family + "-nft-save", family + "-legacy-save"} {
		out, _ := runIn(t, pod, nil, bin)
		all += out
	}
	return all
}
