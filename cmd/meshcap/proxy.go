package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/proxy"
)

func init() { register(newProxyCmd) }

type proxyFlags struct {
	outboundAddr, inboundAddr string
	noInbound                 bool
	envoyPort, inboundPort    string
	inboundSource             string
	uid, gid                  int
	noDrop                    bool
	adminAddr, statsFile      string
	dialTimeout, drainTimeout time.Duration
	copyMode, engine          string
	loops                     int
	logConnections            bool
	pinDir                    string // eBPF inbound registration (proxy_inbound.go)
	dual                      proxyDualStackFlags
	dns                       proxyDNSFlags
}

func newProxyCmd(log *zap.Logger) *cobra.Command {
	var f proxyFlags
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the relay proxy: accept captured connections and relay them to their original destination",
		Long: `Run the relay proxy that captured traffic is steered to (outbound 0.0.0.0:15001, inbound 0.0.0.0:15006, and
as Envoy in a dual-stack pod [::1]:15001 and [::]:15006, skipped where there is no IPv6), and DNS on
127.0.0.1:15053 and [::1]:15053 (UDP and TCP, forwarded to the --resolv-conf nameservers) for --redirect-dns.
The original destination comes from getsockopt(SO_ORIGINAL_DST), answered by the kernel under iptables NAT or by
meshcap's cgroup/getsockopt program in eBPF mode, or, inbound with sk_lookup, from the accepted socket's local
address: the proxy behaves identically in both modes. Started as root it opens its listeners, then drops to
--uid/--gid (the uid capture exempts) so that its own connections are not captured again.

Shutdown on SIGTERM drains like Envoy: for --drain-timeout the proxy keeps accepting and relaying new connections
(an application's own calls during its graceful shutdown still work); then it closes its listeners, waits up to
--drain-timeout again for active connections, closes the rest and exits 0. SIGINT skips the accepting period.
A second signal ends the process at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			return runProxy(cmd.Context(), log, cfg, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.outboundAddr, "outbound-addr", proxy.DefaultOutboundAddr, "outbound listener address")
	fl.StringVar(&f.inboundAddr, "inbound-addr", proxy.DefaultInboundAddr, "inbound listener address")
	fl.BoolVar(&f.noInbound, "no-inbound", false, "do not open the inbound listener")
	fl.StringVarP(&f.envoyPort, "envoy-port", "p", "", "outbound listener port (overrides the port of --outbound-addr; same flag as the capture commands)")
	fl.StringVarP(&f.inboundPort, "inbound-capture-port", "z", "", "inbound listener port (overrides the port of --inbound-addr)")
	fl.StringVar(&f.inboundSource, "inbound-source", proxy.DefaultInboundSource, `source address of inbound upstream connections ("" = kernel's choice)`)
	fl.IntVar(&f.uid, "uid", 1337, "uid to switch to after opening the listeners (the uid capture exempts)")
	fl.IntVar(&f.gid, "gid", 1337, "gid to switch to after opening the listeners")
	fl.BoolVar(&f.noDrop, "no-drop-privileges", false, "keep the current uid/gid (as root, the proxy's own traffic would be captured)")
	fl.StringVar(&f.adminAddr, "admin-addr", "", "admin HTTP address serving /stats and /debug/pprof/, e.g. 127.0.0.1:15000 (default off)")
	fl.StringVar(&f.statsFile, "stats-file", "", "write JSON counters to this file (atomically, at most every 200ms, and at exit)")
	fl.DurationVar(&f.dialTimeout, "dial-timeout", proxy.DefaultDialTimeout, "timeout of each upstream connect")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", proxy.DefaultDrainTimeout, "on SIGTERM/SIGINT: keep accepting and relaying new connections this long (as Envoy's drain period), then stop accepting and wait up to as long again for active connections")
	fl.StringVar(&f.engine, "engine", "loop", "relay engine: loop (epoll event loops, read/write, no goroutine per connection) or goroutine (Go net, pooled goroutines, --copy)")
	fl.IntVar(&f.loops, "loops", 0, "event loops of the loop engine (0 = half the CPUs the process may use, at least 1)")
	fl.StringVar(&f.copyMode, "copy", "splice", "copy mode of --engine goroutine: splice (zero-copy) or buffer (plain read/write); the loop engine always uses read/write")
	fl.BoolVar(&f.logConnections, "log-connections", false, "log each relayed connection (original destination, bytes) at info level")
	bindProxyInboundFlags(fl, &f.pinDir)
	bindProxyDualStackFlags(fl, &f.dual)
	bindProxyDNSFlags(fl, &f.dns)
	return cmd
}

// config validates the flags into a proxy.Config; errors name the bad value.
func (f *proxyFlags) config(cmd *cobra.Command) (proxy.Config, error) {
	cfg := proxy.Config{
		OutboundAddr:   f.outboundAddr,
		InboundAddr:    f.inboundAddr,
		DialTimeout:    f.dialTimeout,
		DrainAccept:    f.drainTimeout,
		DrainTimeout:   f.drainTimeout,
		AdminAddr:      f.adminAddr,
		StatsFile:      f.statsFile,
		LogConnections: f.logConnections,
	}
	var err error
	if cfg.OutboundAddr, err = withPort(cfg.OutboundAddr, "--outbound-addr", f.envoyPort, "--envoy-port", cmd.Flags().Changed("envoy-port")); err != nil {
		return cfg, err
	}
	if cfg.InboundAddr, err = withPort(cfg.InboundAddr, "--inbound-addr", f.inboundPort, "--inbound-capture-port", cmd.Flags().Changed("inbound-capture-port")); err != nil {
		return cfg, err
	}
	if f.noInbound {
		cfg.InboundAddr = ""
	}
	if cfg.OutboundAddr == "" {
		return cfg, fmt.Errorf("invalid --outbound-addr %q: empty", f.outboundAddr)
	}
	if err := f.dual.applyDualStack(cmd.Flags(), &cfg); err != nil {
		return cfg, err
	}
	if f.inboundSource != "" {
		a, err := netip.ParseAddr(f.inboundSource)
		if err != nil || !a.Is4() {
			return cfg, fmt.Errorf("invalid --inbound-source %q: want an IPv4 address", f.inboundSource)
		}
		cfg.InboundSource = a
	}
	if cfg.Copy, err = proxy.ParseCopyMode(f.copyMode); err != nil {
		return cfg, fmt.Errorf("invalid --copy %q: want splice or buffer", f.copyMode)
	}
	if cfg.Engine, err = proxy.ParseEngine(f.engine); err != nil {
		return cfg, fmt.Errorf("invalid --engine %q: want loop or goroutine", f.engine)
	}
	if f.loops < 0 {
		return cfg, fmt.Errorf("invalid --loops %d: negative", f.loops)
	}
	cfg.Loops = f.loops
	if f.uid < 0 {
		return cfg, fmt.Errorf("invalid --uid %d: negative", f.uid)
	}
	if f.gid < 0 {
		return cfg, fmt.Errorf("invalid --gid %d: negative", f.gid)
	}
	if f.dialTimeout <= 0 {
		return cfg, fmt.Errorf("invalid --dial-timeout %s: want > 0", f.dialTimeout)
	}
	if f.drainTimeout < 0 {
		return cfg, fmt.Errorf("invalid --drain-timeout %s: negative", f.drainTimeout)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = time.Nanosecond // 0 given explicitly: do not wait
	}
	for name, v := range map[string]string{"--outbound-addr": cfg.OutboundAddr, "--inbound-addr": cfg.InboundAddr, "--admin-addr": cfg.AdminAddr} {
		if v == "" {
			continue
		}
		if _, err := netip.ParseAddrPort(v); err != nil {
			return cfg, fmt.Errorf("invalid %s %q: want ip:port", name, v)
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// withPort replaces the port of addr when the port flag was given.
func withPort(addr, addrFlag, port, portFlag string, changed bool) (string, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", fmt.Errorf("invalid %s %q: want ip:port", addrFlag, addr)
	}
	if !changed {
		return addr, nil
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", fmt.Errorf("invalid %s %q: want a port 1-65535", portFlag, port)
	}
	return netip.AddrPortFrom(ap.Addr(), uint16(n)).String(), nil
}

func runProxy(ctx context.Context, log *zap.Logger, cfg proxy.Config, f *proxyFlags) error {
	size, fastPath := loader.OrigDstExt() // the BPF program's extended SO_ORIGINAL_DST answer
	proxy.RegisterOrigDstExt(proxy.OrigDstExt{Size: size, FastPath: fastPath})
	so := loader.CaptureStatsSockopt() // the pod's capture counters on /metrics, read without bpf()
	proxy.RegisterPodStats(proxy.PodStatsSockopt{Level: so.Level, Name: so.Name, Size: so.Size, Decode: so.Decode})
	p, err := proxy.New(cfg, log)
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	// Signals are caught before the listeners open: a SIGTERM right after they do must drain, not kill.
	ctx = proxySignals(ctx, p)
	if err := p.Listen(); err != nil {
		return err
	}
	registerInbound(log, p, f.pinDir) // eBPF inbound mode: before the privilege drop (needs CAP_BPF)
	switch euid := os.Geteuid(); {
	case f.noDrop:
		if euid == 0 {
			log.Warn("running as root (--no-drop-privileges): capture does not exempt the proxy's own connections unless it exempts uid 0")
		}
	case euid == 0:
		if err := proxy.DropPrivileges(f.uid, f.gid); err != nil {
			_ = p.Close()
			return err
		}
		if os.Geteuid() == 0 {
			_ = p.Close()
			return fmt.Errorf("refusing to run as uid 0 after dropping privileges (--uid %d): the proxy's own traffic would be captured; use --no-drop-privileges to insist", f.uid)
		}
		log.Info("dropped privileges", zap.Int("uid", f.uid), zap.Int("gid", f.gid))
	case euid != f.uid:
		log.Warn("not root: cannot switch uid; capture must exempt the current uid", zap.Int("uid", euid), zap.Int("want_uid", f.uid))
	}
	// After the privilege drop: istio's DNS rules put the answers into the app's conntrack zone by their owner
	// (uid 1337), which is fixed when the socket is created.
	dns, err := listenDNS(log, &f.dns)
	if err != nil {
		_ = p.Close()
		return err
	}
	// DNS is served until the relay has drained and exits, not only until the signal: an app's own lookups during
	// its graceful shutdown keep working, as its new connections do.
	dnsCtx, stopDNS := context.WithCancel(context.Background())
	waitDNS := serveDNS(dnsCtx, dns)
	err = p.Serve(ctx)
	stopDNS()
	waitDNS()
	return err
}

// proxySignals returns a context cancelled by SIGTERM (the kubelet's: Envoy-like drain, still accepting for
// --drain-timeout) or SIGINT (interactive: stop accepting at once, then wait for active connections). After the
// first signal the default action is restored, so a second one ends the process.
func proxySignals(ctx context.Context, p *proxy.Proxy) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case s := <-sigs:
			if s == syscall.SIGINT {
				p.EndDrainAccept()
			}
		case <-ctx.Done():
		}
		signal.Reset(syscall.SIGTERM, syscall.SIGINT)
		cancel()
	}()
	return ctx
}
