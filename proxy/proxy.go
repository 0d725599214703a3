package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

// Proxy is the relay proxy. Use: New, Listen (as root if needed), optionally DropPrivileges, then Serve.
type Proxy struct {
	cfg Config
	log *zap.Logger

	stats Stats

	listeners   []*listener
	admin       net.Listener
	listenAddrs []netip.AddrPort // bound listener addresses (loop guard)
	ports       []uint16         // every port of the proxy (loop guard)

	dialOut, dialIn *net.Dialer
	srcFallback     atomic.Bool // inbound source bind failed once: connect from the kernel's choice since
	srcFallback6    atomic.Bool // the same for IPv6 destinations (InboundSource6)
	upstreams       upstreamSet

	ctx      context.Context // cancelled when Serve gives up draining
	cancel   context.CancelFunc
	stopping atomic.Bool
	wg       sync.WaitGroup // one per accepted connection

	drainCut     chan struct{} // closed by EndDrainAccept
	drainCutOnce sync.Once

	work chan work    // unbuffered: idle workers wait here (workers.go)
	idle atomic.Int32 // idle workers

	engine *loopEngine // EngineLoop, once Serve started it

	mu     sync.Mutex
	active map[*relay]struct{}
	forced atomic.Bool // drain timed out: remaining and late connections are closed (set under mu)
}

type listener struct {
	dir  Direction
	ln   *net.TCPListener // EngineGoroutine
	fd   int              // EngineLoop: raw non-blocking listener (-1 once closed)
	addr netip.AddrPort
}

// New validates cfg and returns a Proxy; it opens nothing yet.
func New(cfg Config, log *zap.Logger) (*Proxy, error) {
	if log == nil {
		return nil, errors.New("nil logger")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg.withDefaults(), log: log, active: make(map[*relay]struct{}), work: make(chan work), drainCut: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	// KeepAlive -1: no TCP keep-alive on upstream sockets (Go's default would cost four setsockopt calls per
	// connection). Like Envoy's default; the application's own keep-alive still reaches its peer's proxy.
	p.dialOut = &net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: -1}
	p.dialOut.SetMultipathTCP(false)
	p.dialIn = &net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: -1, Control: bindAddressNoPort}
	p.dialIn.SetMultipathTCP(false)
	return p, nil
}

// Stats returns the live counters.
func (p *Proxy) Stats() *Stats { return &p.stats }
