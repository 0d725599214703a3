package capture

import "fmt"

// Limits of the eBPF programs, checked here so that every front end (ebpf attach, init, the agent, meshcap-cni)
// refuses the same values, before anything is attached. The loader checks that they match bpf/include/meshcap.h.
const (
	// MaxIDs is the number of -u uids and of -g gids the programs compare (MC_MAX_IDS).
	MaxIDs = 8
	// DefaultMaxConnections is the per-pod capacity of captured connections whose original destination is kept
	// (--max-connections): sized for busy pods. Maps grow with live connections only (no preallocation).
	DefaultMaxConnections = 65536
	// MaxMaxConnections bounds --max-connections (the maps' hash tables are sized from it).
	MaxMaxConnections = 1 << 22
)

// CheckEBPFLimits returns an error naming the value when p cannot be programmed into the eBPF maps.
func (p Policy) CheckEBPFLimits() error {
	if len(p.ProxyUIDs) > MaxIDs {
		return fmt.Errorf("too many proxy uids %v for -u/--proxy-uid: eBPF capture compares at most %d", p.ProxyUIDs, MaxIDs)
	}
	if len(p.ProxyGIDs) > MaxIDs {
		return fmt.Errorf("too many proxy gids %v for -g/--proxy-gid: eBPF capture compares at most %d", p.ProxyGIDs, MaxIDs)
	}
	return nil
}

// CheckMaxConnections validates a --max-connections value.
func CheckMaxConnections(n uint32) error {
	if n == 0 || n > MaxMaxConnections {
		return fmt.Errorf("invalid --max-connections %d: want 1 to %d", n, MaxMaxConnections)
	}
	return nil
}
