package test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestInitAutoDualStackPodCapturesIPv6: `init --mode auto` in a dual-stack pod (IPv6 enabled as istio decides:
// --dual-stack, or ISTIO_DUAL_STACK) leaves no IPv6 connection uncaptured, whichever mode it picks: an IPv6
// connect goes through the sidecar to its exact destination, IPv6 inbound reaches the app through the sidecar (from
// ::6), and with the sidecar stopped both fail. With eBPF available it picks eBPF, with IPv6 capture on; --mode ebpf
// does the same; with the probe failing it picks iptables and the same holds.
func TestInitAutoDualStackPodCapturesIPv6(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name, mode, wantMode string
		env                  []string
		args                 []string
	}{
		{"auto-flag", "auto", "ebpf", nil, []string{"--dual-stack"}},
		{"auto-env", "auto", "ebpf", []string{"ISTIO_DUAL_STACK=true"}, nil},
		{"ebpf", "ebpf", "ebpf", nil, []string{"--dual-stack"}},
		{"auto-fallback", "auto", "iptables", []string{"MESHCAP_PROBE_DISABLE=connect6"}, []string{"--dual-stack"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := newDualStackTopology(t)
			pin := ebPinRoot(t)
			args := append(append([]string{"--mode", tc.mode, "--cgroup", topo.client.CgroupDir, "--pin-root", pin}, tc.args...), istioInitArgs...)
			log, err := runInitIn(t, topo.client, tc.env, args...)
			if err != nil {
				t.Fatalf("init --mode %s: %v\n%s", tc.mode, err, log)
			}
			if !strings.Contains(log, `"mode": "`+tc.wantMode+`"`) {
				t.Fatalf("init --mode %s did not choose %s:\n%s", tc.mode, tc.wantMode, log)
			}
			if st := ebStatus(t, pin); (len(st.Attachments) != 0) != (tc.wantMode == "ebpf") {
				t.Fatalf("mode %s, eBPF attachments %+v", tc.wantMode, st.Attachments)
			}
			assertIPv6Captured(t, topo, pin)
		})
	}
}

// assertIPv6Captured: in topo's client pod (captured with istio-init's arguments, which include -i '*' and -b '*'),
// IPv6 outbound and inbound go through its sidecar to their exact destinations, and fail with the sidecar stopped.
func assertIPv6Captured(t *testing.T, topo topology, pin string) {
	t.Helper()
	startEcho(t, topo.client, dst("0.0.0.0", ownPort))
	px := startProxy(t, topo.client, "--pin-dir", pin)
	out := dst(server6, 8080)
	if res, err := dial(t, topo.client, user, out, 100); err != nil || !res.Captured() || res.Reached != out || res.Remote != out {
		t.Fatalf("IPv6 outbound: %+v, %v; want captured to %s\n%s", res, err, out, px.stderr.String())
	}
	in := dst("["+client6Addr+"]", ownPort)
	if res, err := dial(t, topo.server, user, in, 100); err != nil || !res.OK || res.Reached != in || !strings.HasPrefix(res.Peer, "[::6]:") {
		t.Fatalf("IPv6 inbound: %+v, %v; want it relayed by the sidecar from [::6]\n%s", res, err, px.stderr.String())
	}
	px.stop()
	if res, err := dial(t, topo.client, user, out, 10); err == nil || res.OK {
		t.Fatalf("IPv6 outbound with the sidecar stopped: %+v; want it to fail", res)
	}
	if res, err := dial(t, topo.server, user, in, 10); err == nil || res.OK {
		t.Fatalf("IPv6 inbound with the sidecar stopped: %+v; want it to fail", res)
	}
}

// TestEBPFAttachRefusesWhatItCannotDo: each setting eBPF capture cannot express is refused by `ebpf attach` with
// a non-zero exit and an error naming it, and nothing is attached; so is an owner group name that the /etc/group of
// `ebpf attach` does not have (iptables would fail on it too).
func TestEBPFAttachRefusesWhatItCannotDo(t *testing.T) {
	requireRoot(t)
	topo := newDualStackTopology(t)
	pin := ebPinRoot(t)
	for _, tc := range []struct {
		flags []string
		env   []string
		want  string
		why   string // what the error says besides want
	}{
		{nil, []string{"ISTIO_OUTBOUND_OWNER_GROUPS=2000,mc-no-such-group"}, `"mc-no-such-group" in ISTIO_OUTBOUND_OWNER_GROUPS`, "unknown group"},
		{nil, []string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=mc-no-such-group"}, `"mc-no-such-group" in ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`, "unknown group"},
		{[]string{"-m", "TPROXY", "-b", "*"}, nil, "TPROXY", "refused"},
	} {
		cmd := exec.Command(meshcapBin, append([]string{"ebpf", "attach", "--pin-dir", pin, "--cgroup", topo.client.CgroupDir,
			"--netns", topo.client.NetnsPath, "-i", "*"}, tc.flags...)...)
		cmd.Env = append(cmd.Environ(), tc.env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), tc.why) {
			t.Errorf("ebpf attach %q env %q: %v\n%s\nwant a non-zero exit naming %q", tc.flags, tc.env, err, out, tc.want)
		}
		if st := ebStatus(t, pin); len(st.Attachments) != 0 {
			t.Fatalf("refused attach left an attachment: %+v", st)
		}
	}
}
