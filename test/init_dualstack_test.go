package test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestInitAutoDualStackPodChoosesIPTables: `init --mode auto` in a dual-stack pod (IPv6 enabled as istio decides:
// --dual-stack, or ISTIO_DUAL_STACK) chooses the iptables mode and says why; IPv6 connections are then captured
// (and fail with the sidecar stopped). `--mode ebpf` fails there and attaches nothing.
func TestInitAutoDualStackPodChoosesIPTables(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"flag", nil, []string{"--dual-stack"}},
		{"env", []string{"ISTIO_DUAL_STACK=true"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := newDualStackTopology(t)
			pin := ebPinRoot(t)
			args := append(append([]string{"--cgroup", topo.client.CgroupDir, "--pin-root", pin}, tc.args...), istioInitArgs...)
			log, err := runInitIn(t, topo.client, tc.env, append([]string{"--mode", "ebpf"}, args...)...)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(log, "IPv6 capture") {
				t.Fatalf("init --mode ebpf in a dual-stack pod: %v; want exit 1 naming IPv6 capture", err)
			}
			if st := ebStatus(t, pin); len(st.Attachments) != 0 {
				t.Fatalf("init --mode ebpf refused but attached: %+v", st)
			}
			log, err = runInitIn(t, topo.client, tc.env, append([]string{"--mode", "auto"}, args...)...)
			if err != nil {
				t.Fatalf("init --mode auto: %v", err)
			}
			if !strings.Contains(log, `"mode": "iptables"`) || !strings.Contains(log, "IPv6 capture") {
				t.Fatal("init --mode auto: log does not say iptables because of IPv6")
			}
			if st := ebStatus(t, pin); len(st.Attachments) != 0 {
				t.Fatalf("eBPF attached in a dual-stack pod: %+v", st)
			}
			px := startProxy(t, topo.client)
			if res, err := dial(t, topo.client, user, dst(server6, 8080), 100); err != nil || !res.Captured() || res.Reached != dst(server6, 8080) {
				t.Fatalf("IPv6 dial after init: %+v, %v; want captured\n%s", res, err, px.stderr.String())
			}
			px.stop()
			if res, err := dial(t, topo.client, user, dst(server6, 8080), 100); err == nil || res.OK {
				t.Fatalf("IPv6 dial with the sidecar stopped: %+v; want it to fail", res)
			}
		})
	}
}

// TestEBPFAttachRefusesWhatItCannotDo: each setting eBPF capture cannot express is refused by `ebpf attach` with
// a non-zero exit and an error naming it, and nothing is attached.
func TestEBPFAttachRefusesWhatItCannotDo(t *testing.T) {
	requireRoot(t)
	topo := newDualStackTopology(t)
	pin := ebPinRoot(t)
	for _, tc := range []struct {
		flags []string
		env   []string
		want  string
	}{
		{[]string{"--dual-stack"}, nil, "IPv6 capture"},
		{nil, []string{"ISTIO_DUAL_STACK=1"}, "IPv6 capture"},
		{[]string{"--redirect-dns"}, nil, "DNS capture"},
		{nil, []string{"ISTIO_META_DNS_CAPTURE=true"}, "DNS capture"},
		{nil, []string{"ISTIO_OUTBOUND_OWNER_GROUPS=java"}, `ISTIO_OUTBOUND_OWNER_GROUPS="java"`},
		{nil, []string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=2000"}, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"},
		{[]string{"-m", "TPROXY", "-b", "*"}, nil, "TPROXY"},
	} {
		cmd := exec.Command(meshcapBin, append([]string{"ebpf", "attach", "--pin-dir", pin, "--cgroup", topo.client.CgroupDir,
			"--netns", topo.client.NetnsPath, "-i", "*"}, tc.flags...)...)
		cmd.Env = append(cmd.Environ(), tc.env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "refused") {
			t.Errorf("ebpf attach %q env %q: %v\n%s\nwant a non-zero exit naming %q", tc.flags, tc.env, err, out, tc.want)
		}
		if st := ebStatus(t, pin); len(st.Attachments) != 0 {
			t.Fatalf("refused attach left an attachment: %+v", st)
		}
	}
}
