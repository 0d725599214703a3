package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DNS is the sidecar's DNS port (istio's agent DNS port 15053): a plain forwarder that istio's DNS rules
// (--redirect-dns) redirect the pod's port-53 traffic to. It forwards each query unchanged to the pod's resolv.conf
// servers, in order, and relays the first answer whose ID matches; the proxy's uid (1337) is exempt from capture,
// so its queries go straight to the servers. It answers SERVFAIL when no server answers.
//
// Invariants:
//   - a message is never altered: the app sees exactly the server's bytes (truncated UDP answers keep their TC
//     bit, and the app retries over TCP as it would without capture);
//   - UDP answers go back from the socket the query arrived on, so that conntrack maps their source back to the
//     server the app asked (iptables REDIRECT);
//   - TCP keeps the RFC 1035 framing: a 2-byte length before each message, in both directions.
//
// Call Listen after dropping to the proxy's uid: istio's raw-table rules put the UDP answers (source port 15053)
// into the app's conntrack zone by their owner, uid 1337, and a socket's owner is fixed when it is created. An
// answer from a root-owned socket keeps 127.0.0.1:15053 as its source, and the app drops it.
type DNS struct {
	cfg DNSConfig
	log *zap.Logger

	udp []*net.UDPConn
	tcp []*net.TCPListener

	wg       sync.WaitGroup
	inflight chan struct{} // bounds concurrent UDP queries
	mu       sync.Mutex
	conns    map[*net.TCPConn]struct{}
}

// DNSConfig configures a DNS forwarder.
type DNSConfig struct {
	// Addrs are the listen addresses, each served over UDP and TCP (for example 127.0.0.1:15053 and [::1]:15053).
	// An IPv6 address that this host cannot use is skipped with a log line.
	Addrs []string
	// Upstreams are the servers asked, in order (resolv.conf's nameservers, port 53).
	Upstreams []netip.AddrPort
	// Timeout is the wait for one server's answer before the next one is asked. 0 = DefaultDNSTimeout.
	Timeout time.Duration
	// IdleTimeout closes a TCP client that sends no query for this long. 0 = DefaultDNSIdleTimeout.
	IdleTimeout time.Duration
}

// DNS defaults (istio's agent DNS port, resolver-like timeouts).
const (
	DefaultDNSAddr        = "127.0.0.1:15053"
	DefaultDNSAddr6       = "[::1]:15053"
	DefaultDNSTimeout     = 2 * time.Second
	DefaultDNSIdleTimeout = 30 * time.Second
	dnsMaxInflight        = 512
	dnsMaxMessage         = 65535
)

// NewDNS validates cfg; it opens nothing yet.
func NewDNS(cfg DNSConfig, log *zap.Logger) (*DNS, error) {
	if log == nil {
		return nil, errors.New("nil logger")
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("dns: no listen address")
	}
	for _, a := range cfg.Addrs {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return nil, fmt.Errorf("invalid DNS listen address %q: want ip:port", a)
		}
	}
	for _, u := range cfg.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return nil, fmt.Errorf("invalid DNS upstream %q: want ip:port", u)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultDNSTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultDNSIdleTimeout
	}
	return &DNS{cfg: cfg, log: log, inflight: make(chan struct{}, dnsMaxInflight), conns: map[*net.TCPConn]struct{}{}}, nil
}

// Listen opens a UDP socket and a TCP listener on every address (before dropping privileges). On error nothing
// stays open.
func (d *DNS) Listen() (err error) {
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	for _, a := range d.cfg.Addrs {
		ap := netip.MustParseAddrPort(a)
		u, t, err := listenDNS(ap)
		if err != nil && ap.Addr().Is6() && ipv6Unavailable(err) {
			d.log.Info("no IPv6 here: DNS listener not opened", zap.String("addr", a), zap.Error(err))
			continue
		}
		if err != nil {
			return fmt.Errorf("dns listen on %s: %w", a, err)
		}
		d.udp, d.tcp = append(d.udp, u), append(d.tcp, t)
		d.log.Info("DNS listening (udp, tcp)", zap.Stringer("addr", u.LocalAddr()), zap.Stringers("upstreams", d.cfg.Upstreams))
	}
	if len(d.udp) == 0 {
		return errors.New("dns: no listener could be opened")
	}
	if len(d.cfg.Upstreams) == 0 {
		d.log.Warn("no DNS server to forward to (resolv.conf has no nameserver): every query is answered SERVFAIL")
	}
	return nil
}

// listenDNS opens UDP and TCP on ap. With port 0, the TCP port is the one UDP got; if TCP has it in use already,
// another port is tried.
func listenDNS(ap netip.AddrPort) (u *net.UDPConn, t *net.TCPListener, err error) {
	for range 20 {
		u, t, err = listenDNSOnce(ap)
		if err == nil || ap.Port() != 0 || !errors.Is(err, unix.EADDRINUSE) {
			return u, t, err
		}
	}
	return nil, nil, err
}

func listenDNSOnce(ap netip.AddrPort) (*net.UDPConn, *net.TCPListener, error) {
	udpNet, tcpNet := "udp4", "tcp4"
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		udpNet, tcpNet = "udp6", "tcp6"
	}
	u, err := net.ListenUDP(udpNet, net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, nil, err
	}
	// The same port for TCP (port 0: the one UDP got).
	tap := netip.AddrPortFrom(ap.Addr(), netip.MustParseAddrPort(u.LocalAddr().String()).Port())
	lc := net.ListenConfig{KeepAlive: -1}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), tcpNet, tap.String())
	if err != nil {
		_ = u.Close()
		return nil, nil, err
	}
	return u, ln.(*net.TCPListener), nil
}

// Addr returns the bound address of the i-th open listener (UDP and TCP share it).
func (d *DNS) Addr(i int) netip.AddrPort {
	if i >= len(d.udp) {
		return netip.AddrPort{}
	}
	return unmapAddrPort(d.udp[i].LocalAddr().(*net.UDPAddr).AddrPort())
}

// Serve answers queries until ctx is cancelled, then closes everything and waits for the queries in flight.
func (d *DNS) Serve(ctx context.Context) {
	for i := range d.udp {
		d.wg.Add(2)
		go func() { defer d.wg.Done(); d.serveUDP(d.udp[i]) }()
		go func() { defer d.wg.Done(); d.serveTCP(d.tcp[i]) }()
	}
	<-ctx.Done()
	d.Close()
	d.wg.Wait()
}

// Close closes the listeners and the TCP clients. Idempotent.
func (d *DNS) Close() {
	for _, u := range d.udp {
		_ = u.Close()
	}
	for _, t := range d.tcp {
		_ = t.Close()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := range d.conns {
		_ = c.Close()
	}
}
