package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

// Status is what is attached and pinned under one pin root.
type Status struct {
	PinRoot     string
	Attachments []AttachmentStatus
}

// AttachmentStatus describes one pinned attachment.
type AttachmentStatus struct {
	CgroupID   uint64
	CgroupPath string // "" when the cgroup is not found from here (gone, or outside this cgroup view)
	PinDir     string
	ProxyPort  uint16 // from the per-pod (key 0) settings; 0 if none
	Programs   []ProgramStatus
	Maps       []MapStatus
	// Stats are the outbound counters by config key: "0" in per-pod mode, the pod's netns cookie in agent mode.
	Stats    map[uint64]CaptureStats `json:"stats,omitempty"`
	StatsErr string                  `json:"statsError,omitempty"`
}

// ProgramStatus is one pinned link.
type ProgramStatus struct {
	Hook     string
	LinkID   uint32
	ProgID   uint32
	CgroupID uint64
	Err      string // why the link could not be read
}

// MapStatus is one pinned map.
type MapStatus struct {
	Name       string
	Type       string
	Entries    int
	MaxEntries uint32
	Err        string
}

// GetStatus lists the attachments pinned under pinRoot ("" = DefaultPinRoot). A missing pin root is an empty status.
func GetStatus(pinRoot string) (*Status, error) {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	st := &Status{PinRoot: pinRoot}
	if _, err := os.Stat(pinRoot); errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	// A pin root others can write is refused here too: its pins could be renamed to hide capture.
	if err := checkPinRoot(pinRoot); err != nil {
		return nil, err
	}
	ids, err := outboundIDs(pinRoot)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		st.Attachments = append(st.Attachments, attachmentStatus(pinDirFor(pinRoot, id), id))
	}
	return st, nil
}

func attachmentStatus(dir string, id uint64) AttachmentStatus {
	path := hostfs.CgroupPathByID(id)
	a := AttachmentStatus{CgroupID: id, CgroupPath: path, PinDir: dir}
	for _, h := range hooks {
		ps := ProgramStatus{Hook: h.name}
		l, err := link.LoadPinnedLink(linkPin(dir, h.name), nil)
		if err != nil {
			ps.Err = err.Error()
			a.Programs = append(a.Programs, ps)
			continue
		}
		if info, err := l.Info(); err != nil {
			ps.Err = err.Error()
		} else {
			ps.LinkID, ps.ProgID = uint32(info.ID), uint32(info.Program)
			if cg := info.Cgroup(); cg != nil {
				ps.CgroupID = cg.CgroupId
			}
		}
		l.Close()
		a.Programs = append(a.Programs, ps)
	}
	names := append(append([]string{}, settingsMaps...), mapOrigTuple, mapStats) // mc_client (socket storage) cannot be iterated
	if _, err := os.Stat(mapPin(dir, mapSockhash)); err == nil {
		names = append(names, mapSockhash) // sockets on the fast path (mc_fp_peer cannot be iterated)
	}
	sort.Strings(names)
	for _, name := range names {
		ms := MapStatus{Name: name}
		m, err := ebpf.LoadPinnedMap(mapPin(dir, name), nil)
		if err != nil {
			ms.Err = err.Error()
			a.Maps = append(a.Maps, ms)
			continue
		}
		ms.Type, ms.MaxEntries = m.Type().String(), m.MaxEntries()
		ms.Entries, err = countEntries(m)
		if err != nil {
			ms.Err = err.Error()
		}
		if name == mapConfig {
			var cfg configValue
			if m.Lookup(uint64(0), &cfg) == nil {
				a.ProxyPort = cfg.ProxyPort
			}
		}
		m.Close()
		a.Maps = append(a.Maps, ms)
	}
	var err error
	if a.Stats, err = ReadCaptureStats(dir); err != nil {
		a.StatsErr = err.Error()
	}
	return a
}

func countEntries(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	val := make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	return n, it.Err()
}

// MapEntries returns the entry count of map name of the attachment in pinDir (a cgroup-<id> directory).
func MapEntries(pinDir, name string) (int, error) {
	m, err := ebpf.LoadPinnedMap(mapPin(pinDir, name), nil)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	return countEntries(m)
}

// PinDir returns the pin directory of cgroupDir's attachment under pinRoot ("" = DefaultPinRoot).
func PinDir(cgroupDir, pinRoot string) (string, error) {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	id, err := hostfs.CgroupID(cgroupDir)
	if err != nil {
		return "", err
	}
	return pinDirFor(pinRoot, id), nil
}

// lookupPinned looks key up in the map pinned as name in each of dirs, first hit wins.
func lookupPinned[K, V any](dirs []string, name string, key *K) (V, bool) {
	var v V
	for _, dir := range dirs {
		m, err := ebpf.LoadPinnedMap(mapPin(dir, name), nil)
		if err != nil {
			continue
		}
		err = m.Lookup(key, &v)
		m.Close()
		if err == nil {
			return v, true
		}
	}
	return v, false
}

// ErrNoOrigDst means the connection is not a captured one (or its entry is gone).
var ErrNoOrigDst = errors.New("no original destination recorded")

// OrigDst returns the original destination of a captured connection, looked up from the proxy's accepted socket:
// local = its local address (the 127/8 address connect4 chose, at the proxy port), remote = its peer (the client), netnsCookie = its netns
// cookie. pinDir is one attachment's directory, or a pin root (every attachment under it is searched).
func OrigDst(pinDir string, local, remote netip.AddrPort, netnsCookie uint64) (netip.AddrPort, error) {
	v6 := !local.Addr().Is4() && !local.Addr().Is4In6()
	if v6 != (!remote.Addr().Is4() && !remote.Addr().Is4In6()) {
		return netip.AddrPort{}, fmt.Errorf("original destination lookup: mixed families (%s, %s)", local, remote)
	}
	dirs := []string{pinDir}
	if _, err := os.Stat(mapPin(pinDir, mapOrigTuple)); err != nil {
		ids, _ := outboundIDs(pinDir)
		dirs = nil
		for _, id := range ids {
			dirs = append(dirs, pinDirFor(pinDir, id))
		}
	}
	if v6 {
		key := tuple6Key{Netns: netnsCookie, LocalAddr: be32x4(local.Addr()), LocalPort: local.Port(),
			RemoteAddr: be32x4(remote.Addr()), RemotePort: remote.Port()}
		if v, ok := lookupPinned[tuple6Key, orig6Value](dirs, mapOrigTup6, &key); ok {
			return netip.AddrPortFrom(addrFromBE32x4(v.Addr), v.Port), nil
		}
	} else {
		key := tupleKey{Netns: netnsCookie, LocalAddr: be32(local.Addr().Unmap()), LocalPort: local.Port(),
			RemoteAddr: be32(remote.Addr().Unmap()), RemotePort: remote.Port()}
		if v, ok := lookupPinned[tupleKey, origValue](dirs, mapOrigTuple, &key); ok {
			return netip.AddrPortFrom(addrFromBE32(v.Addr), v.Port), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("%w for %s <- %s (netns cookie %d) under %s", ErrNoOrigDst, local, remote, netnsCookie, pinDir)
}
