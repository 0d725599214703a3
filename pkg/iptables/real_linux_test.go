package iptables

// Real iptables in throwaway network namespaces, for both the legacy and the nft backend. Root only.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/podnet"
	"github.com/meshcap/meshcap/pkg/podnet/podtest"
)

func requireRoot(t *testing.T) {
	t.Helper()
	podtest.RequireRoot(t, "creates network namespaces and runs iptables in them")
}

// newPod makes a throwaway netns (+ cgroup) named mc-ipt-<random>-<role>.
func newPod(t *testing.T, role string) *podnet.Pod { return podtest.NewPod(t, "mc-ipt", role) }

// countingRunner counts restore calls on top of the real runner.
type countingRunner struct {
	Runner
	restores int
	cmds     []string
}

func (c *countingRunner) Run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	if strings.HasSuffix(name, "-restore") {
		c.restores++
	}
	c.cmds = append(c.cmds, strings.Join(append([]string{name}, args...), " "))
	return c.Runner.Run(ctx, stdin, name, args...)
}

var counterRE = regexp.MustCompile(`\s*\[\d+:\d+\]`)

// saved returns iptables-save output of the pod without comments and counters.
func saved(t *testing.T, pod *podnet.Pod, bin string) string {
	t.Helper()
	out, err := NetnsRunner(pod.NetnsPath).Run(context.Background(), "", bin)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, counterRE.ReplaceAllString(l, ""))
	}
	return strings.Join(lines, "\n")
}

func istioLines(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "ISTIO") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// What iptables-save shows for istio-init's injected default arguments (iptables-save's own normal form).
const injectedSaved = `:ISTIO_INBOUND -
:ISTIO_IN_REDIRECT -
:ISTIO_OUTPUT -
:ISTIO_REDIRECT -
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001`

// injectedConfig parses istio-init's default arguments through the real flag binding.
func injectedConfig(t *testing.T, backend string, extra ...string) capture.Config {
	t.Helper()
	args := append([]string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
		"-d", "15090,15021,15020", "--force-iptables-binary", backend}, extra...)
	cfg, err := configFromArgs(args, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestRealApplyFlow(t *testing.T) {
	requireRoot(t)
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			pod := newPod(t, backend[:3])
			save, otherSave := "iptables-"+backend+"-save", "iptables-nft-save"
			if backend == "nft" {
				otherSave = "iptables-legacy-save"
			}
			run := &countingRunner{Runner: NetnsRunner(pod.NetnsPath)}
			a := &Applier{Runner: run}
			cfg := injectedConfig(t, backend)
			rs, err := Build(cfg, capture.HostFacts{})
			if err != nil {
				t.Fatal(err)
			}

			// Bad input: rejected before any command runs, nothing applied.
			bad := cfg
			bad.InboundPortsInclude = "80x"
			if _, err := Build(bad, capture.HostFacts{}); err == nil || !strings.Contains(err.Error(), `"80x"`) {
				t.Fatalf("bad -b: %v", err)
			}
			if got := istioLines(saved(t, pod, save)); got != "" {
				t.Fatalf("rules present before apply:\n%s", got)
			}

			// First apply: exactly the expected rules.
			if err := a.Apply(ctx, cfg, rs); err != nil {
				t.Fatal(err)
			}
			if got := istioLines(saved(t, pod, save)); got != injectedSaved {
				t.Fatalf("saved rules:\n%s\nwant:\n%s", got, injectedSaved)
			}
			if got := istioLines(saved(t, pod, otherSave)); got != "" {
				t.Fatalf("%s shows rules too:\n%s", otherSave, got)
			}
			if run.restores != 1 {
				t.Fatalf("%d restore calls, want 1 (IPv4 only)", run.restores)
			}
			for _, c := range run.cmds {
				if strings.HasSuffix(strings.Fields(c)[0], "-restore") && backend == "legacy" && !strings.Contains(c, "--wait=30") {
					t.Errorf("legacy restore without --wait=30: %q", c)
				}
			}

			// Idempotent re-apply: no restore, nothing changes.
			before := saved(t, pod, save)
			run.restores = 0
			if err := a.Apply(ctx, cfg, rs); err != nil {
				t.Fatal(err)
			}
			if run.restores != 0 {
				t.Fatal("re-apply ran iptables-restore")
			}
			if after := saved(t, pod, save); after != before {
				t.Fatalf("re-apply changed the rules:\n%s\n---\n%s", before, after)
			}

			// Drift: an extra rule in ISTIO_OUTPUT. Without --reconcile the apply fails; with it the rules are restored.
			if _, err := run.Run(ctx, "", "iptables-"+backend, "-t", "nat", "-A", "ISTIO_OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"); err != nil {
				t.Fatal(err)
			}
			if err := a.Apply(ctx, cfg, rs); err == nil {
				t.Fatal("apply over drifted rules without --reconcile succeeded")
			}
			rec := cfg
			rec.Reconcile = true
			if err := a.Apply(ctx, rec, rs); err != nil {
				t.Fatal(err)
			}
			after := saved(t, pod, save)
			if got := istioLines(after); got != injectedSaved {
				t.Fatalf("after reconcile:\n%s", got)
			}
			if strings.Contains(after, "-j DROP") {
				t.Fatalf("guardrails left behind:\n%s", after)
			}

			// A rule in a non-ISTIO chain is not drift.
			if _, err := run.Run(ctx, "", "iptables-"+backend, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "RETURN"); err != nil {
				t.Fatal(err)
			}
			run.restores = 0
			if err := a.Apply(ctx, cfg, rs); err != nil || run.restores != 0 {
				t.Fatalf("foreign rule treated as drift: err=%v restores=%d", err, run.restores)
			}

			// --force-apply over existing chains fails (as istio).
			fa := cfg
			fa.ForceApply = true
			if err := a.Apply(ctx, fa, rs); err == nil {
				t.Fatal("--force-apply over existing chains succeeded")
			}

			// --cleanup-only with plain defaults (another config than the applied one) removes every ISTIO chain and jump.
			clean := capture.Default()
			clean.CleanupOnly, clean.ForceIptablesBinary = true, backend
			clean.ResolveDefaultsWith(nil)
			crs, err := Build(clean, capture.HostFacts{})
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Apply(ctx, clean, crs); err != nil {
				t.Fatal(err)
			}
			final := saved(t, pod, save)
			if strings.Contains(final, "ISTIO") {
				t.Fatalf("cleanup left ISTIO rules:\n%s", final)
			}
			if !strings.Contains(final, "-A OUTPUT -p udp -m udp --dport 9 -j RETURN") {
				t.Fatalf("cleanup removed a foreign rule:\n%s", final)
			}
		})
	}
}

func TestRealApplyIPv6AndTProxy(t *testing.T) {
	requireRoot(t)
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			pod := newPod(t, backend[:3])
			cfg := injectedConfig(t, backend, "-m", "TPROXY", "--drop-invalid", "--redirect-dns", "--capture-all-dns", "-k", "eth9", "-c", "eth8")
			rs, err := Build(cfg, capture.HostFacts{IPv6: true})
			if err != nil {
				t.Fatal(err)
			}
			a := &Applier{Runner: NetnsRunner(pod.NetnsPath)}
			if err := a.Apply(ctx, cfg, rs); err != nil {
				t.Fatal(err)
			}
			// Every planned rule is in place in both families (Verify runs -C for each).
			for _, v6 := range []bool{false, true} {
				v, err := a.Detect(ctx, v6, backend)
				if err != nil {
					t.Fatal(err)
				}
				residue, delta, err := a.Verify(ctx, v, rs.Rules(v6))
				if err != nil || !residue || delta {
					t.Fatalf("v6=%v: residue=%v delta=%v err=%v", v6, residue, delta, err)
				}
			}
			out, _ := NetnsRunner(pod.NetnsPath).Run(ctx, "", "ip", "-6", "addr", "show", "dev", "lo")
			if !strings.Contains(out, "::6/128") {
				t.Errorf("::6/128 not on lo:\n%s", out)
			}
			for _, f := range []string{"-4", "-6"} {
				rules, _ := NetnsRunner(pod.NetnsPath).Run(ctx, "", "ip", f, "rule")
				routes, _ := NetnsRunner(pod.NetnsPath).Run(ctx, "", "ip", f, "route", "show", "table", "133")
				if !strings.Contains(rules, "fwmark 0x539 lookup 133") || !strings.Contains(routes, "local default dev lo") {
					t.Errorf("%s: tproxy routing missing:\n%s\n%s", f, rules, routes)
				}
			}
			// Re-apply is a no-op (routes tolerate existing entries), cleanup removes everything.
			if err := a.Apply(ctx, cfg, rs); err != nil {
				t.Fatal(err)
			}
			cfg.CleanupOnly = true
			if err := a.Apply(ctx, cfg, rs); err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"iptables-" + backend + "-save", "ip6tables-" + backend + "-save"} {
				if got := saved(t, pod, s); strings.Contains(got, "ISTIO") || strings.Contains(got, "eth8") || strings.Contains(got, "eth9") {
					t.Fatalf("%s after cleanup:\n%s", s, got)
				}
			}
		})
	}
}

// origDst returns SO_ORIGINAL_DST of an accepted IPv4 connection.
func origDst(c net.Conn) (netip.AddrPort, error) {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var mreq *unix.IPv6Mreq
	var serr error
	if err := raw.Control(func(fd uintptr) {
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
	}); err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, serr
	}
	b := mreq.Multiaddr[:]
	port := binary.BigEndian.Uint16(b[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), port), nil
}

// serve answers each connection with one line: "<tag> <original destination or local address>".
func serve(t *testing.T, pod *podnet.Pod, addr, tag string, useOrigDst bool) {
	t.Helper()
	ln, err := pod.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dst := c.LocalAddr().String()
			if useOrigDst {
				if d, err := origDst(c); err != nil {
					dst = "error:" + err.Error()
				} else {
					dst = d.String()
				}
			}
			fmt.Fprintf(c, "%s %s\n", tag, dst)
			c.Close()
		}
	}()
}

// dialIn connects from inside pod (as root) and returns the first line the server sends.
func dialIn(t *testing.T, pod *podnet.Pod, addr string) string {
	t.Helper()
	var line string
	err := pod.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(false)
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, pod.Name, err)
	}
	return strings.TrimSpace(line)
}

// dialAs connects from inside pod as uid/gid id using bash's /dev/tcp (a separate process with that owner).
func dialAs(t *testing.T, pod *podnet.Pod, id uint32, host string, port int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d && head -n1 <&3", host, port))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := pod.Start(cmd, &podnet.Cred{UID: id, GID: id}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dial %s:%d as %d: %v: %s", host, port, id, err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

func TestRealTraffic(t *testing.T) {
	requireRoot(t)
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			cli, srv := newPod(t, backend[:1]+"cli"), newPod(t, backend[:1]+"srv")
			cliIP, srvIP := netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.2/24")
			if err := podnet.Link(cli, srv, cliIP, srvIP); err != nil {
				t.Fatal(err)
			}
			// Host facts from the pod itself: its only non-loopback address is IPv4.
			cfg := injectedConfig(t, backend)
			var facts capture.HostFacts
			if err := InNetns(srv.NetnsPath, func() (err error) { facts, err = capture.HostSource{}.Facts(cfg); return err }); err != nil {
				t.Fatal(err)
			}
			if facts.IPv6 {
				t.Fatal("IPv4 pod detected as IPv6")
			}
			rs, err := Build(cfg, facts)
			if err != nil {
				t.Fatal(err)
			}
			if err := (&Applier{Runner: NetnsRunner(srv.NetnsPath)}).Apply(context.Background(), cfg, rs); err != nil {
				t.Fatal(err)
			}
			serve(t, srv, "0.0.0.0:15001", "outbound", true)
			serve(t, srv, "0.0.0.0:15006", "inbound", true)
			serve(t, srv, "0.0.0.0:15021", "direct", false)
			serve(t, cli, "0.0.0.0:80", "direct", false)

			// Outbound from the app (root) is captured to 15001 with the original destination.
			if got, want := dialIn(t, srv, "198.18.0.1:80"), "outbound 198.18.0.1:80"; got != want {
				t.Errorf("outbound as root: got %q, want %q", got, want)
			}
			// The proxy's uid 1337 is exempt.
			if got, want := dialAs(t, srv, 1337, "198.18.0.1", 80), "direct 198.18.0.1:80"; got != want {
				t.Errorf("outbound as 1337: got %q, want %q", got, want)
			}
			// Another uid is captured.
			if got, want := dialAs(t, srv, 1000, "198.18.0.1", 80), "outbound 198.18.0.1:80"; got != want {
				t.Errorf("outbound as 1000: got %q, want %q", got, want)
			}
			// Inbound to any port is captured to 15006 with the original destination...
			if got, want := dialIn(t, cli, "198.18.0.2:8080"), "inbound 198.18.0.2:8080"; got != want {
				t.Errorf("inbound: got %q, want %q", got, want)
			}
			// ...except the -d ports.
			if got, want := dialIn(t, cli, "198.18.0.2:15021"), "direct 198.18.0.2:15021"; got != want {
				t.Errorf("inbound excluded port: got %q, want %q", got, want)
			}
		})
	}
}
