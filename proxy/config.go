package proxy

import (
	"fmt"
	"net/netip"
	"time"
)

// Direction names a listener: outbound (app -> world, port 15001) or inbound (world -> app, port 15006).
type Direction uint8

const (
	Outbound Direction = iota
	Inbound
)

func (d Direction) String() string {
	if d == Inbound {
		return "inbound"
	}
	return "outbound"
}

// CopyMode selects how bytes are relayed.
type CopyMode uint8

const (
	// CopySplice relays with (*net.TCPConn).ReadFrom, which uses splice(2): zero-copy.
	CopySplice CopyMode = iota
	// CopyBuffer relays with plain read/write through pooled buffers. Needed for sockets in a
	// sockmap with sk_msg redirection, where splice never sees the redirected data.
	CopyBuffer
)

func (m CopyMode) String() string {
	if m == CopyBuffer {
		return "buffer"
	}
	return "splice"
}

// ParseCopyMode parses "splice" or "buffer".
func ParseCopyMode(s string) (CopyMode, error) {
	switch s {
	case "splice":
		return CopySplice, nil
	case "buffer":
		return CopyBuffer, nil
	}
	return 0, fmt.Errorf("invalid copy mode %q: want splice or buffer", s)
}

// Engine selects how the proxy runs its connections.
type Engine uint8

const (
	// EngineLoop (the default) runs every connection on a few epoll event loops with raw non-blocking sockets and
	// read/write through one buffer per loop: no goroutine per connection (loop.go).
	EngineLoop Engine = iota
	// EngineGoroutine runs each connection on pooled goroutines with Go's net package and the Copy mode (splice
	// by default).
	EngineGoroutine
)

func (e Engine) String() string {
	if e == EngineGoroutine {
		return "goroutine"
	}
	return "loop"
}

// ParseEngine parses "loop" or "goroutine".
func ParseEngine(s string) (Engine, error) {
	switch s {
	case "loop":
		return EngineLoop, nil
	case "goroutine":
		return EngineGoroutine, nil
	}
	return 0, fmt.Errorf("invalid engine %q: want loop or goroutine", s)
}

// Defaults.
const (
	DefaultOutboundAddr  = "0.0.0.0:15001" // as Envoy's virtual outbound listener: eBPF mode spreads captured connections over 127/8
	DefaultInboundAddr   = "0.0.0.0:15006"
	DefaultInboundSource = "127.0.0.6"
	// IPv6 twins, as Envoy listens in a dual-stack pod (and istio's ip6tables rules redirect to them); see dualstack.go.
	DefaultOutboundAddr6  = "[::1]:15001"
	DefaultInboundAddr6   = "[::]:15006"
	DefaultInboundSource6 = "::6"
	DefaultDialTimeout    = 5 * time.Second
	DefaultDrainTimeout   = 5 * time.Second
	DefaultStatsInterval  = 200 * time.Millisecond
)

// Config configures a Proxy. The zero value of an optional field disables that feature.
type Config struct {
	// OutboundAddr and InboundAddr are the listen addresses ("ip:port"); "" disables that listener.
	// An IPv4 literal listens on IPv4 only, an IPv6 literal on IPv6 only.
	OutboundAddr string
	InboundAddr  string
	// OutboundAddr6 and InboundAddr6 are optional second listeners of the same directions, for IPv6 (IPv6-only
	// sockets, so that they coexist with an IPv4 listener on the same port). "" = none. When this host or netns
	// has no IPv6 they are skipped with a log line: nothing can be redirected to them then.
	OutboundAddr6 string
	InboundAddr6  string
	// InboundSource is the source address of upstream connections made for inbound traffic (istio: 127.0.0.6),
	// used for IPv4 destinations. Invalid (zero) = let the kernel choose.
	InboundSource netip.Addr
	// InboundSource6 is the same for IPv6 destinations (istio: ::6, which its IPv6 rules exempt on lo).
	InboundSource6 netip.Addr
	// DialTimeout bounds each upstream connect. 0 = DefaultDialTimeout.
	DialTimeout time.Duration
	// DrainAccept is how long the proxy keeps accepting and relaying new connections after Serve's context is
	// cancelled (SIGTERM), as Envoy does during its drain period, so that an application's own calls during its
	// graceful shutdown still work. 0 = stop accepting at once.
	DrainAccept time.Duration
	// DrainTimeout bounds the wait for active connections once the listeners are closed. 0 = DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Engine: EngineLoop (default) or EngineGoroutine. Loops is the number of event loops (0 = DefaultLoops).
	Engine Engine
	Loops  int
	// Copy applies to EngineGoroutine; EngineLoop always relays with read/write.
	Copy CopyMode
	// Resolver, if non-nil, is asked first for each connection's original destination. A connection it answers
	// is not checked for the eBPF fast path (that answer comes with SO_ORIGINAL_DST): no Resolver with --fast-path.
	Resolver Resolver
	// ExtraPorts are more ports of the local proxy (for example the sidecar's other ports) that must never
	// be relayed to on a local address (loop guard). The listeners' and admin ports are always included.
	ExtraPorts []uint16
	// AdminAddr, if set, serves GET /stats (JSON) and /debug/pprof/ over HTTP.
	AdminAddr string
	// StatsFile, if set, receives the JSON counters, written atomically (temp + rename) at most every
	// StatsInterval when they changed, and at stop.
	StatsFile     string
	StatsInterval time.Duration
	// LogConnections logs every relayed connection at info level (otherwise at debug level).
	LogConnections bool
}

// Validate checks the configuration without touching the system.
func (c *Config) Validate() error {
	if c.OutboundAddr == "" && c.InboundAddr == "" {
		return fmt.Errorf("no listener: outbound and inbound addresses are both empty")
	}
	for _, a := range []struct{ name, v string }{{"outbound", c.OutboundAddr}, {"inbound", c.InboundAddr}, {"admin", c.AdminAddr},
		{"outbound IPv6", c.OutboundAddr6}, {"inbound IPv6", c.InboundAddr6}} {
		if a.v == "" {
			continue
		}
		if _, err := netip.ParseAddrPort(a.v); err != nil {
			return fmt.Errorf("invalid %s address %q: %w", a.name, a.v, err)
		}
	}
	if ap, err := netip.ParseAddrPort(c.OutboundAddr); err == nil && ap.Port() != 0 && c.OutboundAddr == c.InboundAddr {
		return fmt.Errorf("outbound and inbound listen on the same address %q", c.OutboundAddr)
	}
	if c.InboundSource.IsValid() && !c.InboundSource.Is4() {
		return fmt.Errorf("invalid inbound source %q: want an IPv4 address", c.InboundSource)
	}
	if err := c.validateDualStack(); err != nil {
		return err
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("invalid dial timeout %s: negative", c.DialTimeout)
	}
	if c.DrainAccept < 0 {
		return fmt.Errorf("invalid drain accept period %s: negative", c.DrainAccept)
	}
	if c.DrainTimeout < 0 {
		return fmt.Errorf("invalid drain timeout %s: negative", c.DrainTimeout)
	}
	if c.StatsInterval < 0 {
		return fmt.Errorf("invalid stats interval %s: negative", c.StatsInterval)
	}
	if c.Engine != EngineLoop && c.Engine != EngineGoroutine {
		return fmt.Errorf("invalid engine %d", c.Engine)
	}
	if c.Loops < 0 {
		return fmt.Errorf("invalid loops %d: negative", c.Loops)
	}
	if c.Copy != CopySplice && c.Copy != CopyBuffer {
		return fmt.Errorf("invalid copy mode %d", c.Copy)
	}
	return nil
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.DialTimeout == 0 {
		d.DialTimeout = DefaultDialTimeout
	}
	if d.DrainTimeout == 0 {
		d.DrainTimeout = DefaultDrainTimeout
	}
	if d.StatsInterval == 0 {
		d.StatsInterval = DefaultStatsInterval
	}
	return d
}
