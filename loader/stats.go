package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
)

// CaptureStats are one pod's outbound counters (struct mc_stats; per-pod mode: netns key 0 of its attachment,
// agent mode: its netns cookie). ConnsInUse and TuplesInUse are gauges; the rest count since the pod's settings
// were first written.
type CaptureStats struct {
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
	MaxConns       uint32 `json:"max_connections"` // the capacity (0 when the settings are gone)
}

// ReadCaptureStats returns the counters of every config key of the attachment pinned in pinDir (a cgroup-<id>
// directory). An attachment made before the counters existed has none (empty map).
func ReadCaptureStats(pinDir string) (map[uint64]CaptureStats, error) {
	m, err := ebpf.LoadPinnedMap(mapPin(pinDir, mapStats), nil)
	if errors.Is(err, os.ErrNotExist) {
		return map[uint64]CaptureStats{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", mapStats, err)
	}
	defer m.Close()
	cfgs, err := ebpf.LoadPinnedMap(mapPin(pinDir, mapConfig), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", mapConfig, err)
	}
	defer cfgs.Close()
	out := map[uint64]CaptureStats{}
	var key uint64
	var v statsValue
	it := m.Iterate()
	for it.Next(&key, &v) {
		st := CaptureStats{
			Captured: v.Captured, ExemptPort: v.ExemptPort, ExemptOwner: v.ExemptOwner, ExemptLoopback: v.ExemptLoopback,
			ExemptCIDR: v.ExemptCidr, NotIncluded: v.NotIncluded, RefusedFull: v.RefusedFull, TupleLost: v.TupleLost,
			ConnsInUse: max(v.Conns, 0), TuplesInUse: max(v.Tuples, 0),
		}
		var cfg configValue
		if cfgs.Lookup(&key, &cfg) == nil {
			st.MaxConns = cfg.MaxConns
		}
		out[key] = st
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", mapStats, err)
	}
	return out, nil
}

// OrigDstExt is the layout of the cgroup/getsockopt program's extended SO_ORIGINAL_DST answer (struct
// mc_origdst_ext, generated from the program's BTF): its size, and the reader of its fast-path flag (for
// proxy.RegisterOrigDstExt, wired by the command).
func OrigDstExt() (size int, fastPath func(answer []byte) bool) {
	var ext getsockoptMcOrigdstExt
	return binary.Size(ext), func(answer []byte) bool {
		var v getsockoptMcOrigdstExt
		if _, err := binary.Decode(answer, binary.NativeEndian, &v); err != nil {
			return false
		}
		return v.Flags&origDstFastPath != 0
	}
}

// origDstFastPath is MC_ORIGDST_F_FAST_PATH (a #define: not in BTF; TestEnumsMatchHeader checks it).
const origDstFastPath = 1
