package test

// Where nftables mode differs from iptables mode by design (testdata/istio-golden/nftables/CASES.md section E),
// these tests assert the documented behaviour of each mode with the same flags.

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNftablesIPv6CapturedInIPv4Pod: in a pod whose address is IPv4, istio-init's arguments in nftables mode also
// redirect IPv6 connections (one inet table; the rules without an address match see IPv6 too) to [::1]:15001,
// while iptables mode writes no ip6tables rules and leaves IPv6 alone.
func TestNftablesIPv6CapturedInIPv4Pod(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		mode     string
		captured bool
	}{{"nftables", true}, {"iptables", false}} {
		t.Run(tc.mode, func(t *testing.T) {
			pod := iptablesPod(t)
			args := append([]string{"iptables"}, iptablesInjectedArgs...)
			if tc.mode == "nftables" {
				args = append(args, "--native-nftables")
			}
			if _, err := runIn(t, pod, nil, meshcapBin, args...); err != nil {
				t.Fatal(err)
			}
			// An IPv6 route out of the pod, added after the rules so that the pod stays IPv4-only for istio.
			if out, err := exec.Command("ip", "-n", pod.Name, "addr", "add", "2001:db8:1::1/64", "dev", pod.Veth, "nodad").CombinedOutput(); err != nil {
				t.Fatalf("add IPv6 route: %v %s", err, out)
			}
			ln, err := pod.Listen("[::1]:15001")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan string, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted <- c.LocalAddr().String()
					c.Close()
				}
			}()
			var dialErr error
			_ = pod.Do(func() error {
				c, err := net.DialTimeout("tcp6", "[2001:db8:1::99]:80", 2*time.Second)
				if err == nil {
					c.Close()
				}
				dialErr = err
				return nil
			})
			var got string
			select {
			case got = <-accepted:
			case <-time.After(500 * time.Millisecond):
			}
			if tc.captured && (dialErr != nil || got != "[::1]:15001") {
				t.Fatalf("IPv6 connection not redirected to [::1]:15001: dial %v, accepted %q", dialErr, got)
			}
			if !tc.captured && (dialErr == nil || got != "") {
				t.Fatalf("IPv6 connection captured in iptables mode: dial %v, accepted %q", dialErr, got)
			}
		})
	}
}

// TestNftablesDropInvalidTCPOnly: --drop-invalid drops conntrack-INVALID packets of TCP only in nftables mode,
// of every protocol in iptables mode.
func TestNftablesDropInvalidTCPOnly(t *testing.T) {
	requireRoot(t)
	pod := iptablesPod(t)
	if _, err := runIn(t, pod, nil, meshcapBin, "iptables", "--native-nftables", "--drop-invalid", "-i", "*"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nsenter", "--net="+pod.NetnsPath, "nft", "list", "chain", "inet", "istio-proxy-mangle", "prerouting").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "meta l4proto tcp ct state invalid counter packets 0 bytes 0 jump istio-drop") {
		t.Fatalf("nft mangle prerouting (%v):\n%s", err, out)
	}
	if _, err := runIn(t, pod, nil, meshcapBin, "iptables", "--force-iptables-binary", "legacy", "--drop-invalid", "-i", "*"); err != nil {
		t.Fatal(err)
	}
	saved, err := exec.Command("nsenter", "--net="+pod.NetnsPath, "iptables-legacy-save", "-t", "mangle").Output()
	if err != nil || !strings.Contains(string(saved), "-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP\n") {
		t.Fatalf("iptables mangle (%v):\n%s", err, saved)
	}
}
