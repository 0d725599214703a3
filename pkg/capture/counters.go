package capture

// Counters are one pod's outbound capture counters, as the eBPF programs keep them (struct mc_stats): per-pod mode
// one set per attachment, agent mode one per pod netns. ConnsInUse and TuplesInUse are gauges; the rest count
// since the pod's settings were first written.
type Counters struct {
	Captured       uint64 `json:"captured"`        // connects sent to the proxy
	ExemptPort     uint64 `json:"exempt_port"`     // -o ports
	ExemptOwner    uint64 `json:"exempt_owner"`    // -u / -g owners
	ExemptLoopback uint64 `json:"exempt_loopback"` // loopback destinations
	ExemptCIDR     uint64 `json:"exempt_cidr"`     // -x CIDRs
	NotIncluded    uint64 `json:"not_included"`    // neither -q nor -i
	RefusedFull    uint64 `json:"refused_full"`    // refused at connect: --max-connections reached
	TupleLost      uint64 `json:"tuple_lost"`      // proxy-side entry not written (node-wide table full)
	ConnsInUse     int64  `json:"conns_in_use"`    // captured client sockets open now (entries in use)
	TuplesInUse    int64  `json:"tuples_in_use"`   // proxy-side destination entries in use
	MaxConns       uint32 `json:"max_connections"` // the capacity (0 when unknown)
}
