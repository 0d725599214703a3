// Package validation is meshcap's `--run-validation`: from inside a pod, prove that the capture in place (eBPF or
// iptables, whichever is there) redirects connections as configured, the check istio-cni's `istio-validation` init
// container runs in every pod.
//
// As istio's validator: listen on 127.0.0.1 at the outbound port (-p, 15001) and the inbound capture port
// (-z, 15006), dial a probe port (--iptables-probe-port, 15002) that nothing listens on, and pass when one of the
// listeners accepts a probe whose original destination (SO_ORIGINAL_DST, or the local address when that is not
// answered, as with sk_lookup) has the probe port. Probes go to 127.0.0.6 (istio's: the proxy uid's loopback
// traffic that istio's rule 11a, and connect4 in eBPF mode, send to the inbound port) and to the pod's own IPv4
// address (inbound via sk_lookup for a captured -b port). Run as another uid, both go over lo and are returned,
// as under istio's rules.
//
// Invariants: it never changes capture; everything it opens (two listeners, probe sockets) is closed before Run
// returns, so nothing is left behind (in eBPF mode the kernel drops a closed listener from the inbound sockmap).
package validation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/meshcap/meshcap/proxy"
)

// ErrFailed: no probe was redirected within the timeout. Callers exit with ExitCode.
var ErrFailed = errors.New("validation failed: no probe connection was redirected to the proxy ports")

// ExitCode is istio-validation's exit code for a failed validation.
const ExitCode = 126

// Config says what to check.
type Config struct {
	OutboundPort uint16        // -p
	InboundPort  uint16        // -z
	ProbePort    uint16        // --iptables-probe-port
	Timeout      time.Duration // --probe-timeout
}

// Result says which probe got through, and to which listener.
type Result struct {
	Probe    string // address dialled
	Listener uint16 // the port that accepted it (OutboundPort or InboundPort)
	OrigDst  string // the original destination the listener recovered
}

// Run performs the check and returns ErrFailed (wrapped with what was seen) when no probe was redirected.
func Run(ctx context.Context, log *zap.Logger, c Config) (*Result, error) {
	if c.ProbePort == 0 || c.OutboundPort == 0 || c.InboundPort == 0 {
		return nil, fmt.Errorf("invalid validation ports: probe %d, outbound %d, inbound %d", c.ProbePort, c.OutboundPort, c.InboundPort)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	got := make(chan Result, 1)
	n, closeAll := listenAll(log, c, got)
	defer closeAll()
	if n == 0 {
		return nil, fmt.Errorf("%w: cannot listen on 127.0.0.1:%d nor 127.0.0.1:%d", ErrFailed, c.OutboundPort, c.InboundPort)
	}
	targets := probeTargets(c.ProbePort)
	log.Info("validating capture", zap.Strings("probes", targets), zap.Duration("timeout", c.Timeout))
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, t := range targets {
			probe(ctx, t)
		}
		select {
		case r := <-got:
			return &r, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("%w within %s (probes %v)", ErrFailed, c.Timeout, targets)
		case <-tick.C:
		}
	}
}

// listenAll opens the two listeners (one in use, e.g. by a running sidecar, is skipped as istio does).
func listenAll(log *zap.Logger, c Config, got chan<- Result) (int, func()) {
	var lns []net.Listener
	for _, port := range []uint16{c.OutboundPort, c.InboundPort} {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false) // a sockmap (eBPF inbound) cannot hold an MPTCP socket
		ln, err := lc.Listen(context.Background(), "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		if err != nil {
			log.Warn("validation: cannot listen", zap.Uint16("port", port), zap.Error(err))
			continue
		}
		lns = append(lns, ln)
		go serve(ln, port, c.ProbePort, got)
	}
	return len(lns), func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
}

// serve accepts until closed; a connection whose original destination port is the probe port is the proof.
func serve(ln net.Listener, port, probePort uint16, got chan<- Result) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		dst, err := originalDst(conn.(*net.TCPConn))
		if err == nil {
			_, _ = conn.Write([]byte(strconv.Itoa(int(dst.Port())))) // as istio: the recovered port, for debugging
		}
		conn.Close()
		if err != nil || dst.Port() != probePort {
			continue // a stray connection, not our probe
		}
		select {
		case got <- Result{Probe: dst.String(), Listener: port, OrigDst: dst.String()}:
		default:
		}
	}
}

// probeTargets: istio's 127.0.0.6 and every IPv4 address of the pod that is not loopback.
func probeTargets(port uint16) []string {
	out := []string{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.6"), port).String()}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().Is4() || p.Addr().IsLoopback() {
			continue
		}
		out = append(out, netip.AddrPortFrom(p.Addr(), port).String())
	}
	return out
}

// probe dials target once; its outcome is seen by the listeners, not here.
func probe(ctx context.Context, target string) {
	d := net.Dialer{Timeout: 500 * time.Millisecond}
	d.SetMultipathTCP(false)
	c, err := d.DialContext(ctx, "tcp4", target)
	if err == nil {
		c.Close()
	}
}

// originalDst asks SO_ORIGINAL_DST (iptables REDIRECT, meshcap's cgroup/getsockopt programs); when it is not
// answered, the local address stands (sk_lookup steering keeps it, as TPROXY does).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	if dst, err := proxy.GetOriginalDst(c); err == nil {
		return dst, nil
	}
	local, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("local address: %w", err)
	}
	return netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), nil
}
