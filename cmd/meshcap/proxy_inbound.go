package main

import (
	"errors"
	"os"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/proxy"
)

// Inbound capture in eBPF mode: the proxy registers its own inbound listener in the sk_lookup sockmap pinned for
// its network namespace (docs/inbound.md, "the proxy registers itself"). Kept out of proxy.go on purpose.

// bindProxyInboundFlags registers the proxy's eBPF inbound flags.
func bindProxyInboundFlags(fl *pflag.FlagSet, pinDir *string) {
	fl.StringVar(pinDir, "pin-dir", loader.DefaultPinRoot, "bpffs directory of meshcap's pins, where the inbound listener is registered in eBPF mode")
}

// registerInbound puts the proxy's inbound listeners (IPv4, and the IPv6 one where it is open) into the inbound
// capture of its network namespace, and logs one line saying how that went (every outcome names "inbound
// listener", so a supervisor or a test can wait for it). Called
// after Listen and before dropping privileges (it needs CAP_BPF). Not being in eBPF inbound mode is normal
// (iptables mode, or capture attached later: `meshcap ebpf attach` then finds the listener itself); any other
// failure is logged, because captured inbound connections are refused until a listener is registered.
func registerInbound(log *zap.Logger, p *proxy.Proxy, pinDir string) {
	lns := p.Listeners(proxy.Inbound)
	if len(lns) == 0 || pinDir == "" {
		log.Info("no inbound listener registered with eBPF inbound capture (no inbound listener, or no --pin-dir)")
		return
	}
	useHostViews(log, &pinDir, nil)
	if !hostfs.OnBPFFS(pinDir) {
		log.Warn("pin dir is not on a bpf filesystem here, so the inbound listener cannot be registered with eBPF inbound capture; "+
			"if inbound capture is attached to this netns, its connections are refused until `meshcap ebpf attach` is run again "+
			"(it finds this listener) or the proxy is started where the pins are visible (nsenter --net=... instead of ip netns exec)",
			zap.String("pinDir", pinDir))
		return
	}
	var err error
	for _, ln := range lns {
		if err = loader.RegisterInboundListener(pinDir, ln); err != nil {
			break
		}
	}
	switch {
	case err == nil:
		log.Info("registered the inbound listeners with eBPF inbound capture", zap.String("pinDir", pinDir), zap.Int("listeners", len(lns)))
	case errors.Is(err, loader.ErrInboundNotAttached):
		log.Info("inbound listeners not registered: no eBPF inbound capture in this netns (iptables mode, or attached later)", zap.Error(err))
	case os.Geteuid() != 0:
		log.Info("cannot register the inbound listener with eBPF inbound capture (not root)", zap.Error(err))
	default:
		log.Warn("cannot register the inbound listener with eBPF inbound capture: captured inbound connections are refused until `meshcap ebpf attach` finds it",
			zap.Error(err))
	}
}
