package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/meshcap/meshcap/pkg/capture"
)

// CaptureStats are one pod's outbound counters (capture.Counters).
type CaptureStats = capture.Counters

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
		st := capture.Counters{
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

// StatsSockopt is how a process in a captured pod reads its own pod's counters without bpf(): getsockopt(Level,
// Name) on any of its sockets, with a buffer of Size bytes, answered by the cgroup/getsockopt program (struct
// mc_stats_answer, generated from its BTF); Decode reads the answer. The kernel alone answers ENOPROTOOPT (not
// captured).
type StatsSockopt struct {
	Level, Name, Size int
	Decode            func(answer []byte) (capture.Counters, bool)
}

// mcSoCaptureStats is MC_SO_CAPTURE_STATS (a #define: not in BTF; TestEnumsMatchHeader checks it).
const mcSoCaptureStats = 0x4d43

// CaptureStatsSockopt returns the StatsSockopt of the loaded programs.
func CaptureStatsSockopt() StatsSockopt {
	var a getsockoptMcStatsAnswer
	return StatsSockopt{Level: 0 /* SOL_IP */, Name: mcSoCaptureStats, Size: binary.Size(a), Decode: decodeStatsAnswer}
}

func decodeStatsAnswer(answer []byte) (capture.Counters, bool) {
	var a getsockoptMcStatsAnswer
	if len(answer) < binary.Size(a) {
		return capture.Counters{}, false
	}
	if _, err := binary.Decode(answer, binary.NativeEndian, &a); err != nil {
		return capture.Counters{}, false
	}
	return capture.Counters{
		Captured: a.Captured, ExemptPort: a.ExemptPort, ExemptOwner: a.ExemptOwner, ExemptLoopback: a.ExemptLoopback,
		ExemptCIDR: a.ExemptCidr, NotIncluded: a.NotIncluded, RefusedFull: a.RefusedFull, TupleLost: a.TupleLost,
		ConnsInUse: max(a.Conns, 0), TuplesInUse: max(a.Tuples, 0), MaxConns: a.MaxConns,
	}, true
}
