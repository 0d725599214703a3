package proxy

import "sync/atomic"

// ListenerStats counts one listener's connections and bytes.
type ListenerStats struct {
	Accepted atomic.Uint64 // connections accepted
	Active   atomic.Int64  // connections currently open (accepted, not yet closed)
	Relayed  atomic.Uint64 // connections whose upstream was connected (relay started)
	FastPath atomic.Uint64 // relayed connections whose client socket was on the eBPF fast path (read/write copy)
	// BytesUp: downstream (the accepted client) -> upstream (original destination). BytesDown: the reverse.
	BytesUp   atomic.Uint64
	BytesDown atomic.Uint64
}

// ErrorStats counts failures by kind.
type ErrorStats struct {
	OrigDst atomic.Uint64 // original destination unknown
	Dial    atomic.Uint64 // upstream connect failed
	Loop    atomic.Uint64 // refused: destination is the proxy itself
	Relay   atomic.Uint64 // a copy direction failed (other than EOF)
	Accept  atomic.Uint64 // accept() failed (transient)
}

// Stats holds every counter of a Proxy. All fields are safe for concurrent use.
type Stats struct {
	Outbound ListenerStats
	Inbound  ListenerStats
	Errors   ErrorStats
}

func (s *Stats) listener(d Direction) *ListenerStats {
	if d == Inbound {
		return &s.Inbound
	}
	return &s.Outbound
}

// ListenerSnapshot is a point-in-time copy of ListenerStats (JSON-friendly).
type ListenerSnapshot struct {
	Accepted  uint64 `json:"accepted"`
	Active    int64  `json:"active"`
	Relayed   uint64 `json:"relayed"`
	FastPath  uint64 `json:"fast_path,omitempty"`
	BytesUp   uint64 `json:"bytes_up"`
	BytesDown uint64 `json:"bytes_down"`
}

// ErrorSnapshot is a point-in-time copy of ErrorStats.
type ErrorSnapshot struct {
	OrigDst uint64 `json:"origdst"`
	Dial    uint64 `json:"dial"`
	Loop    uint64 `json:"loop"`
	Relay   uint64 `json:"relay"`
	Accept  uint64 `json:"accept"`
}

// Snapshot is the JSON document of /stats and the stats file. It is comparable with ==.
type Snapshot struct {
	Outbound ListenerSnapshot `json:"outbound"`
	Inbound  ListenerSnapshot `json:"inbound"`
	Errors   ErrorSnapshot    `json:"errors"`
}

func (l *ListenerStats) snapshot() ListenerSnapshot {
	return ListenerSnapshot{
		Accepted:  l.Accepted.Load(),
		Active:    l.Active.Load(),
		Relayed:   l.Relayed.Load(),
		FastPath:  l.FastPath.Load(),
		BytesUp:   l.BytesUp.Load(),
		BytesDown: l.BytesDown.Load(),
	}
}

// Snapshot copies the counters (each one atomically; the set is not one atomic cut).
func (s *Stats) Snapshot() Snapshot {
	return Snapshot{
		Outbound: s.Outbound.snapshot(),
		Inbound:  s.Inbound.snapshot(),
		Errors: ErrorSnapshot{
			OrigDst: s.Errors.OrigDst.Load(),
			Dial:    s.Errors.Dial.Load(),
			Loop:    s.Errors.Loop.Load(),
			Relay:   s.Errors.Relay.Load(),
			Accept:  s.Errors.Accept.Load(),
		},
	}
}
