package loader

// Inbound capture: the sk_lookup program of bpf/sk_lookup.c, attached to one pod network namespace.
//
// Who does what (docs/inbound.md has the reasoning):
//   - `meshcap init` / `ebpf attach` / the agent (root, runs once): AttachInbound loads the programs, writes the
//     policy, attaches sk_lookup to the netns and the cgroup programs (inbound_cgroup.go) to the pod's cgroup with
//     bpf_links, and pins links and maps under <pin root>/netns-<cookie>/inbound/, then may exit.
//   - From then on the kernel registers the sidecar by itself: a socket an exempt uid/gid binds to -z is put into
//     the sockmap when it starts listening, whichever process it is and whenever it starts. A closed listener
//     leaves the sockmap by itself, and captured ports are then refused (fail closed, like istio).
//   - A listener that existed before the attach is found by AttachInbound with FindListener (sock_diag in the netns
//     + pidfd_getfd; exempt owners only; one per family), or explicitly with FindInboundListeners. meshcap's own
//     proxy, which listens as root before dropping to the proxy uid, registers itself with RegisterInboundListener.
//   - IPv6 (Policy.IPv6, the pod's fact): sk_lookup decides IPv6 lookups too; the sockmap keeps one listener per
//     family (inbSlotInet, inbSlotInet6), and ::6/128 goes on lo for the sidecar's passthrough connections.
//
// Re-attaching updates in place: new settings maps and program are swapped in atomically with link.Update, while the
// listener sockmap (and so the proxy's registration) and the counters are kept.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/hostfs"
)

// DefaultInboundPinRoot is where inbound attachments are pinned unless InboundOptions.PinRoot says otherwise: the
// same root as the outbound attachments (they use cgroup-<id>/, inbound uses netns-<cookie>/inbound/).
const DefaultInboundPinRoot = DefaultPinRoot

// ErrInboundNotAttached: no inbound capture is pinned for that network namespace.
var ErrInboundNotAttached = errors.New("inbound capture is not attached in this network namespace")

// Values of the C enums in bpf/include/inbound.h (enums are not in the object's BTF, so bpf2go cannot emit them).
const (
	inbFlagEnabled  = 1 << 0 // INB_F_ENABLED
	inbFlagAllPorts = 1 << 1 // INB_F_ALL_PORTS
	inbFlagIPv6     = 1 << 2 // INB_F_IPV6
	inbSlotInet     = 0      // INB_SLOT_INET: the AF_INET listener
	inbSlotInet6    = 1      // INB_SLOT_INET6: the AF_INET6 listener (IPv6-only or dual-stack)
	inbPortCapture  = 1      // INB_PORT_CAPTURE
	inbPortExclude  = 2      // INB_PORT_EXCLUDE
	inbStatSteered  = 0      // INB_STAT_STEERED ... INB_STAT_ORIGDST, in order
	inbStatMax      = 8      // INB_STAT_MAX
)

type inbConfigValue = inboundInbConfig

// InboundOptions tune AttachInbound.
type InboundOptions struct {
	// PinRoot is a directory on bpffs; empty means DefaultInboundPinRoot.
	PinRoot string
	// Listener, if not nil, is the proxy's listening socket on the capture port (a *net.TCPListener or an *os.File),
	// registered before the program is attached, so no SYN is refused in between.
	Listener syscall.Conn
	// FindListener, when Listener is nil, looks for a process holding a TCP listener on the capture port in the
	// netns and registers it (pidfd_getfd), if its owner is exempt (-u/-g). Finding none is not an error:
	// InboundInfo.Listener reports it.
	FindListener bool
	// Cgroup is the cgroup v2 directory whose processes' listeners are registered by the kernel itself (the pod's
	// cgroup, or the agent's shared one). Empty: no self-registration (an update keeps the cgroup attached before).
	Cgroup string
}

// InboundStats are the program's counters (summed over CPUs) since the first attach in this netns.
type InboundStats struct {
	Steered        uint64 // handed to the proxy listener
	PassLoopback   uint64 // 127/8 source or destination, left alone
	PassPort       uint64 // port not captured (tunnel, capture port, -d, not in -b)
	DropNoListener uint64 // captured port, no listener registered: refused
	DropAssign     uint64 // the registered listener could not take the connection: refused
	Registered     uint64 // exempt listeners registered by the kernel at listen()
	RefusedOwner   uint64 // sockets bound to the capture port by a non-exempt owner: never registered
	OrigDst        uint64 // SO_ORIGINAL_DST answered on steered connections
}

// InboundInfo describes one netns's inbound attachment.
type InboundInfo struct {
	NetnsCookie    uint64
	PinDir         string
	Attached       bool     // the pinned link is attached to a live netns
	Listener       bool     // a proxy listener is registered (else captured connections are refused)
	Listener6      bool     // the registered listeners include an AF_INET6 one (IPv6-only or dual-stack)
	IPv6           bool     // native IPv6 is captured too (the pod has IPv6 enabled: Policy.IPv6)
	SelfRegister   bool     // the cgroup programs are attached: an exempt listener on -z registers by itself
	ListenerCookie uint64   // socket cookie of the registered listener
	CapturePort    uint16   // -z
	TunnelPort     uint16   // -e
	AllPorts       bool     // -b '*'
	Ports          []uint16 // with AllPorts: the -d exclusions; without: the -b list (sorted)
	Stats          InboundStats
}

// inboundSettings turns a policy into the program's config value and port verdicts (istio's ISTIO_INBOUND chain).
func inboundSettings(p capture.Policy) (inbConfigValue, map[uint16]uint8, error) {
	var cfg inbConfigValue
	if !p.InboundEnabled() {
		return cfg, nil, errors.New("no inbound ports to capture (-b is empty): nothing to attach; detach instead")
	}
	if p.InboundCapturePort == 0 {
		return cfg, nil, errors.New("invalid inbound capture port 0 (-z)")
	}
	cfg.CapturePort = p.InboundCapturePort
	cfg.TunnelPort = p.InboundTunnelPort
	cfg.Flags = inbFlagEnabled
	if p.IPv6 {
		cfg.Flags |= inbFlagIPv6
	}
	if len(p.ProxyUIDs) > len(cfg.Uids) || len(p.ProxyGIDs) > len(cfg.Gids) {
		return cfg, nil, fmt.Errorf("at most %d proxy uids (-u) and %d gids (-g) for inbound capture", len(cfg.Uids), len(cfg.Gids))
	}
	cfg.N_uids, cfg.N_gids = uint8(len(p.ProxyUIDs)), uint8(len(p.ProxyGIDs))
	copy(cfg.Uids[:], p.ProxyUIDs)
	copy(cfg.Gids[:], p.ProxyGIDs)
	ports := map[uint16]uint8{}
	if p.InboundAll {
		cfg.Flags |= inbFlagAllPorts
		for _, port := range p.InboundExcludePorts {
			ports[port] = inbPortExclude
		}
	} else {
		// -d is ignored with a -b list, as in istio.
		for _, port := range p.InboundPorts {
			ports[port] = inbPortCapture
		}
	}
	return cfg, ports, nil
}

// AttachInbound attaches (or, if already attached, atomically updates) inbound capture in the network namespace at
// netnsPath (/var/run/netns/NAME or /proc/PID/ns/net) with policy p, and pins it so it outlives the caller.
// Nothing is left half-applied on error: a fresh attach is undone, an update keeps the previous settings.
func AttachInbound(netnsPath string, p capture.Policy, opts InboundOptions) (*InboundInfo, error) {
	info, err := attachInbound(netnsPath, p, opts)
	if err != nil {
		return nil, fmt.Errorf("attach inbound to %s: %w", netnsPath, err)
	}
	return info, nil
}

func attachInbound(netnsPath string, p capture.Policy, opts InboundOptions) (_ *InboundInfo, err error) {
	cfg, ports, err := inboundSettings(p)
	if err != nil {
		return nil, err
	}
	ns, cookie, err := inbOpenNetns(netnsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	if hostfs.IsNetnsCookie(cookie) { // else (NetnsID's stand-in: no cookie readable) 0: per-pod only
		cfg.NetnsCookie = cookie
	}

	root := opts.PinRoot
	if root == "" {
		root = DefaultInboundPinRoot
	}
	if err := hostfs.RequireBPFFS(root); err != nil {
		return nil, err
	}
	dir := InboundPinDir(root, cookie)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if err := allowBPFMemory(); err != nil {
		return nil, err
	}
	spec, err := inbLookupHook.load()
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", inbLookupHook.object, err)
	}
	// Keep the proxy's registration and the counters across a re-attach: reuse their pinned maps when compatible.
	replace := map[string]*ebpf.Map{}
	var created []string // pins this call made at their final names (removed again on failure)
	defer func() {
		for _, m := range replace {
			m.Close()
		}
		if err != nil {
			for _, name := range created {
				_ = os.Remove(inbPin(dir, name))
			}
			_ = os.Remove(inbPin(dir, inbPinConfig+inbPinNewSufx))
			_ = os.Remove(inbPin(dir, inbPinPorts+inbPinNewSufx))
			_ = os.Remove(dir) // only when empty: a failed fresh attach leaves nothing
			_ = os.Remove(filepath.Dir(dir))
		}
	}()
	reused := map[string]bool{}
	for pin, name := range inbKeptMaps {
		m, err := ebpf.LoadPinnedMap(inbPin(dir, pin), nil)
		if err != nil {
			continue // absent (fresh attach) or unreadable: a new map is created and pinned below
		}
		if spec.Maps[name].Compatible(m) != nil {
			m.Close() // an older layout: start over with a new map (the proxy must register again)
			continue
		}
		replace[name] = m
		reused[pin] = true
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		return nil, fmt.Errorf("load sk_lookup program: %w", inbVerifierError(err))
	}
	defer coll.Close()
	prog := coll.Programs[inbLookupHook.prog]
	cfgMap, portMap := coll.Maps[inboundMapInbCfg], coll.Maps[inboundMapInbPorts]
	lisMap := coll.Maps[inboundMapInbListener]

	for port, verdict := range ports {
		if err := portMap.Update(port, verdict, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("write port %d: %w", port, err)
		}
	}
	if err := cfgMap.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}

	// Register the listener before the program can see a SYN, so that nothing is refused in between.
	switch {
	case opts.Listener != nil:
		if err := inbRegisterListener(lisMap, opts.Listener, cookie, cfg.CapturePort); err != nil {
			return nil, err
		}
	case opts.FindListener:
		if err := inbRegisterFound(lisMap, ns, cookie, cfg.CapturePort, p); err != nil {
			return nil, err
		}
	}
	if p.IPv6 {
		if err := inbPassthroughSource6(ns); err != nil {
			return nil, err
		}
	}

	// New listener/stats maps are pinned at their final names; the settings maps of this attach get "_new" names
	// and replace the old pins only once the program that uses them is live.
	for pin, name := range inbKeptMaps {
		if reused[pin] {
			continue
		}
		m := coll.Maps[name]
		path := inbPin(dir, pin)
		_ = os.Remove(path) // a stale pin that could not be reused
		if err := m.Pin(path); err != nil {
			return nil, fmt.Errorf("pin %s map: %w", pin, err)
		}
		created = append(created, pin)
	}
	// The settings maps replace the old pins (swapIn) once the programs that use them are live. The cgroup
	// programs go in before sk_lookup: a sidecar that starts listening meanwhile is registered.
	fresh := map[string]interface{ Pin(string) error }{inbPinConfig: cfgMap, inbPinPorts: portMap}
	activate := func() error {
		cgCreated, err := inbAttachCgroup(dir, opts.Cgroup, coll.Maps)
		created = append(created, cgCreated...)
		if err != nil {
			return err
		}
		return inbActivate(dir, ns, prog)
	}
	if err := swapIn(dir, fresh, activate); err != nil {
		return nil, err
	}
	return inboundInfo(dir, cookie)
}

// inbActivate points the pinned netns link at prog (atomic: every lookup sees either the old program and maps or
// the new ones), or attaches and pins a new link.
func inbActivate(dir string, ns *os.File, prog *ebpf.Program) error {
	linkPath := inbPin(dir, inbPinLink)
	if inbLinkAttached(linkPath) {
		l, err := link.LoadPinnedLink(linkPath, nil)
		if err != nil {
			return fmt.Errorf("load pinned link: %w", err)
		}
		err = l.Update(prog)
		l.Close()
		if err != nil {
			return fmt.Errorf("replace sk_lookup program: %w", err)
		}
		return nil
	}
	l, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		return fmt.Errorf("attach sk_lookup: %w", err)
	}
	_ = os.Remove(linkPath) // a stale pin: unloadable, or a link someone detached
	if err := l.Pin(linkPath); err != nil {
		l.Close() // the only reference: this detaches
		return fmt.Errorf("pin sk_lookup link: %w", err)
	}
	l.Close()
	return nil
}

// DetachInbound removes inbound capture from the network namespace at netnsPath and its pins. Idempotent: a netns
// with nothing attached is fine. pinRoot empty means DefaultInboundPinRoot.
func DetachInbound(netnsPath, pinRoot string) error {
	ns, cookie, err := inbOpenNetns(netnsPath)
	if err != nil {
		return fmt.Errorf("detach inbound from %s: %w", netnsPath, err)
	}
	ns.Close()
	if err := DetachInboundCookie(pinRoot, cookie); err != nil {
		return fmt.Errorf("detach inbound from %s: %w", netnsPath, err)
	}
	return nil
}

// DetachInboundCookie is DetachInbound by netns cookie, for a netns that may already be gone (its link is then
// detached by the kernel, but the pins stay until removed). Idempotent.
func DetachInboundCookie(pinRoot string, netnsCookie uint64) error {
	dir := InboundPinDir(pinRoot, netnsCookie)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	unlock, err := lockDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // removed meanwhile
		}
		return err
	}
	defer unlock()
	// Detach explicitly: another process may still hold a reference to a link.
	if err := inbDetachLinks(dir); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	// Unpinning the maps frees them; the proxy's listener itself stays open (only its sockmap entry goes).
	for _, e := range entries {
		if err := os.Remove(inbPin(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin %s: %w", e.Name(), err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	_ = os.Remove(filepath.Dir(dir)) // netns-<cookie>/: only if nothing else lives there
	return nil
}

// DetachAllInbound detaches every inbound attachment pinned under pinRoot ("" = DefaultInboundPinRoot), live or
// not, and removes their pins. It returns the netns cookies it detached. Idempotent.
func DetachAllInbound(pinRoot string) ([]uint64, error) {
	cookies, err := inboundCookies(pinRoot)
	if err != nil {
		return nil, fmt.Errorf("detach all inbound: %w", err)
	}
	var done []uint64
	var errs []error
	for _, c := range cookies {
		if err := DetachInboundCookie(pinRoot, c); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, c)
	}
	if err := errors.Join(errs...); err != nil {
		return done, fmt.Errorf("detach all inbound: %w", err)
	}
	return done, nil
}

// ListInbound reports every inbound attachment pinned under pinRoot ("" = DefaultInboundPinRoot), sorted by netns
// cookie. An attachment whose pins cannot be read is skipped, with its error joined into the returned error.
func ListInbound(pinRoot string) ([]InboundInfo, error) {
	cookies, err := inboundCookies(pinRoot)
	if err != nil {
		return nil, fmt.Errorf("list inbound: %w", err)
	}
	var out []InboundInfo
	var errs []error
	for _, c := range cookies {
		info, err := inboundInfo(InboundPinDir(pinRoot, c), c)
		if err != nil {
			errs = append(errs, fmt.Errorf("netns cookie %d: %w", c, err))
			continue
		}
		out = append(out, *info)
	}
	return out, errors.Join(errs...)
}

// InboundCookie returns the cookie of the network namespace at netnsPath (the name of its pin directory).
func InboundCookie(netnsPath string) (uint64, error) {
	ns, cookie, err := inbOpenNetns(netnsPath)
	if err != nil {
		return 0, err
	}
	ns.Close()
	return cookie, nil
}

// PruneInbound removes the pins of inbound attachments whose network namespace no longer exists, and returns the
// netns cookies it pruned.
func PruneInbound(pinRoot string) ([]uint64, error) {
	if pinRoot == "" {
		pinRoot = DefaultInboundPinRoot
	}
	cookies, err := inboundCookies(pinRoot)
	if err != nil {
		return nil, fmt.Errorf("prune inbound: %w", err)
	}
	var pruned []uint64
	var errs []error
	for _, cookie := range cookies {
		if inbLinkAttached(inbPin(InboundPinDir(pinRoot, cookie), inbPinLink)) {
			continue
		}
		if err := DetachInboundCookie(pinRoot, cookie); err != nil {
			errs = append(errs, err)
			continue
		}
		pruned = append(pruned, cookie)
	}
	if err := errors.Join(errs...); err != nil {
		return pruned, fmt.Errorf("prune inbound: %w", err)
	}
	return pruned, nil
}

// inbLinkAttached: the pinned netns link still points at a live netns (the kernel zeroes it when the netns dies).
func inbLinkAttached(path string) bool { return inbLinkNetnsInode(path) != 0 }

// inbLinkNetnsInode is the nsfs inode of the netns the pinned sk_lookup link at path is attached to; 0 when it is
// not (any more) attached or cannot be read.
func inbLinkNetnsInode(path string) uint32 {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return 0
	}
	defer l.Close()
	li, err := l.Info()
	if err != nil {
		return 0
	}
	if ni := li.NetNs(); ni != nil {
		return ni.NetnsInode
	}
	return 0
}

// inbListenerPinID is the id the inbound pins of the listener's netns are named by: the listener's own NetnsID where
// a directory of that name exists, else that of the directory whose sk_lookup link is attached to a netns with the
// listener's nsfs inode (an attached link holds its netns, so the inode names one live netns). A process that reads
// no netns cookie (a sidecar container without a writable cgroupfs on Linux 5.10) names a netns by the inode
// stand-in while the pins may carry the cookie the attaching process read, or the other way round.
func inbListenerPinID(pinRoot string, li inbListenerFacts) uint64 {
	if exists(InboundPinDir(pinRoot, li.netnsCookie)) {
		return li.netnsCookie
	}
	ids, _ := inboundCookies(pinRoot)
	for _, id := range ids {
		ino := inbLinkNetnsInode(inbPin(InboundPinDir(pinRoot, id), inbPinLink))
		if ino != 0 && uint64(ino) == li.netnsInode {
			return id
		}
	}
	return li.netnsCookie
}

// RegisterInboundListener puts ln, the proxy's listening socket on the capture port, into the pinned sockmap of the
// netns the socket lives in (found from the socket itself, so a proxy needs no netns path). Call it after listening
// and before dropping privileges (it needs CAP_BPF, which root has). Registering again replaces the entry; closing
// the socket removes it. Returns an error wrapping ErrInboundNotAttached when nothing is attached in that netns yet:
// a proxy may treat that as "not captured" and carry on.
// The listener must be TCP (not MPTCP: Go >= 1.24 listeners need ListenConfig.SetMultipathTCP(false)), listening,
// IPv4 or IPv6 (IPv6-only or dual-stack; one listener per family is kept), and bound to the configured capture port.
func RegisterInboundListener(pinRoot string, ln syscall.Conn) error {
	li, err := inbInspectListener(ln)
	if err != nil {
		return fmt.Errorf("register inbound listener: %w", err)
	}
	li.netnsCookie = inbListenerPinID(pinRoot, li)
	dir := InboundPinDir(pinRoot, li.netnsCookie)
	m, err := ebpf.LoadPinnedMap(inbPin(dir, inbPinListener), nil)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("register inbound listener: %w (no %s)", ErrInboundNotAttached, dir)
	}
	if err != nil {
		return fmt.Errorf("register inbound listener: %w", err)
	}
	defer m.Close()
	cfg, err := readInboundConfig(dir)
	if err != nil {
		return fmt.Errorf("register inbound listener: %w", err)
	}
	if err := inbStoreListener(m, ln, li, li.netnsCookie, cfg.CapturePort); err != nil {
		return fmt.Errorf("register inbound listener: %w", err)
	}
	return nil
}

// inbRegisterFound registers every exempt listener on the capture port in ns (one per family slot). Finding none is
// not an error.
func inbRegisterFound(m *ebpf.Map, ns *os.File, cookie uint64, port uint16, p capture.Policy) error {
	found, err := inbFindListeners(ns, cookie, port, inbExemptOwner(p))
	if err != nil && !errors.Is(err, ErrInboundListenerNotFound) {
		return err
	}
	defer func() {
		for _, f := range found {
			f.Close()
		}
	}()
	for _, f := range found {
		if err := inbRegisterListener(m, f, cookie, port); err != nil {
			return err
		}
	}
	return nil
}

// inbRegisterListener validates ln against the target netns and capture port, then stores it in the slot of its
// family in m.
func inbRegisterListener(m *ebpf.Map, ln syscall.Conn, netnsCookie uint64, capturePort uint16) error {
	li, err := inbInspectListener(ln)
	if err != nil {
		return err
	}
	return inbStoreListener(m, ln, li, netnsCookie, capturePort)
}

// inbStoreListener is inbRegisterListener with ln already inspected (li).
func inbStoreListener(m *ebpf.Map, ln syscall.Conn, li inbListenerFacts, netnsCookie uint64, capturePort uint16) error {
	if li.netnsCookie != netnsCookie {
		return fmt.Errorf("listener is in netns cookie %d, not in the attached netns (cookie %d)", li.netnsCookie, netnsCookie)
	}
	if li.port != capturePort {
		return fmt.Errorf("listener is on port %d, but the inbound capture port (-z) is %d", li.port, capturePort)
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var uerr error
	if err := rc.Control(func(fd uintptr) {
		uerr = m.Update(li.slot, uint64(fd), ebpf.UpdateAny)
	}); err != nil {
		return err
	}
	if uerr != nil {
		return fmt.Errorf("store listener in sockmap: %w", uerr)
	}
	return nil
}

type inbListenerFacts struct {
	netnsCookie uint64 // NetnsID
	netnsInode  uint64
	port        uint16
	slot        uint32 // inbSlotInet or inbSlotInet6
}

// inbInspectListener checks that ln can take over SYN lookups: a listening TCP socket, IPv4 (slot 0) or IPv6
// (slot 1: IPv6-only, or dual-stack, which sk_lookup also uses for IPv4 when slot 0 is empty).
func inbInspectListener(ln syscall.Conn) (inbListenerFacts, error) {
	var lf inbListenerFacts
	rc, err := ln.SyscallConn()
	if err != nil {
		return lf, fmt.Errorf("listener: %w", err)
	}
	var ierr error
	err = rc.Control(func(ufd uintptr) {
		fd := int(ufd)
		proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil {
			ierr = fmt.Errorf("listener: not a socket: %w", err)
			return
		}
		if proto == unix.IPPROTO_MPTCP {
			ierr = errors.New("listener is an MPTCP socket, which a sockmap cannot hold: listen with net.ListenConfig.SetMultipathTCP(false)")
			return
		}
		typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if proto != unix.IPPROTO_TCP || typ != unix.SOCK_STREAM {
			ierr = fmt.Errorf("listener is not a TCP socket (protocol %d, type %d)", proto, typ)
			return
		}
		if acc, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); acc != 1 {
			ierr = errors.New("socket is not listening")
			return
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			ierr = fmt.Errorf("listener: getsockname: %w", err)
			return
		}
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			lf.port, lf.slot = uint16(a.Port), inbSlotInet
		case *unix.SockaddrInet6:
			lf.port, lf.slot = uint16(a.Port), inbSlotInet6
		default:
			ierr = fmt.Errorf("listener has unsupported address %T", sa)
			return
		}
		lf.netnsCookie, lf.netnsInode, err = socketNetnsIDInode(fd)
		if err != nil {
			ierr = fmt.Errorf("listener: netns cookie: %w", err)
		}
	})
	if err != nil {
		return lf, fmt.Errorf("listener: %w", err)
	}
	return lf, ierr
}

// InboundStatus reports the inbound attachment of the netns at netnsPath; the error wraps ErrInboundNotAttached if
// there is none.
func InboundStatus(netnsPath, pinRoot string) (*InboundInfo, error) {
	ns, cookie, err := inbOpenNetns(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("inbound status of %s: %w", netnsPath, err)
	}
	ns.Close()
	dir := InboundPinDir(pinRoot, cookie)
	if _, err := os.Stat(inbPin(dir, inbPinLink)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("inbound status of %s: %w", netnsPath, ErrInboundNotAttached)
	}
	info, err := inboundInfo(dir, cookie)
	if err != nil {
		return nil, fmt.Errorf("inbound status of %s: %w", netnsPath, err)
	}
	return info, nil
}

func readInboundConfig(dir string) (inbConfigValue, error) {
	var cfg inbConfigValue
	m, err := ebpf.LoadPinnedMap(inbPin(dir, inbPinConfig), nil)
	if err != nil {
		return cfg, fmt.Errorf("load pinned config: %w", err)
	}
	defer m.Close()
	if err := m.Lookup(uint32(0), &cfg); err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	return cfg, nil
}

// inboundInfo reads everything back from the pins in dir.
func inboundInfo(dir string, cookie uint64) (*InboundInfo, error) {
	info := &InboundInfo{NetnsCookie: cookie, PinDir: dir, Attached: inbLinkAttached(inbPin(dir, inbPinLink)),
		SelfRegister: inbCgroupAttached(dir)}
	cfg, err := readInboundConfig(dir)
	if err != nil {
		return nil, err
	}
	info.CapturePort, info.TunnelPort = cfg.CapturePort, cfg.TunnelPort
	info.AllPorts = cfg.Flags&inbFlagAllPorts != 0
	info.IPv6 = cfg.Flags&inbFlagIPv6 != 0

	ports, err := ebpf.LoadPinnedMap(inbPin(dir, inbPinPorts), nil)
	if err != nil {
		return nil, fmt.Errorf("load pinned ports: %w", err)
	}
	defer ports.Close()
	var port uint16
	var verdict uint8
	it := ports.Iterate()
	for it.Next(&port, &verdict) {
		info.Ports = append(info.Ports, port)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read ports: %w", err)
	}
	slices.Sort(info.Ports)

	lis, err := ebpf.LoadPinnedMap(inbPin(dir, inbPinListener), nil)
	if err != nil {
		return nil, fmt.Errorf("load pinned listener map: %w", err)
	}
	defer lis.Close()
	for _, slot := range []uint32{inbSlotInet6, inbSlotInet} { // the IPv4 listener's cookie wins when both are there
		var c uint64
		switch err := lis.Lookup(slot, &c); {
		case err == nil:
			info.Listener, info.ListenerCookie = true, c
			info.Listener6 = info.Listener6 || slot == inbSlotInet6
		case !errors.Is(err, ebpf.ErrKeyNotExist) && !errors.Is(err, unix.EINVAL):
			return nil, fmt.Errorf("read listener map: %w", err)
		}
	}

	stats, err := ebpf.LoadPinnedMap(inbPin(dir, inbPinStats), nil)
	if err != nil {
		return nil, fmt.Errorf("load pinned stats: %w", err)
	}
	defer stats.Close()
	var sums [inbStatMax]uint64
	for i := range sums {
		var perCPU []uint64
		if err := stats.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read stats: %w", err)
		}
		for _, v := range perCPU {
			sums[i] += v
		}
	}
	info.Stats = InboundStats{
		Steered: sums[inbStatSteered], PassLoopback: sums[1], PassPort: sums[2], DropNoListener: sums[3], DropAssign: sums[4],
		Registered: sums[5], RefusedOwner: sums[6], OrigDst: sums[7],
	}
	return info, nil
}

// inbKeptMaps are the maps a re-attach keeps (pin name -> map name): the registered listener, the steered
// connections that may still ask SO_ORIGINAL_DST, marked sockets that are about to listen, and the counters.
var inbKeptMaps = map[string]string{
	inbPinListener: inboundMapInbListener,
	inbPinStats:    inboundMapInbStats,
	inbPinSteered:  inboundMapInbSteered,
	inbPinSteered6: inboundMapInbSteered6,
	inbPinExempt:   inboundMapInbExemptBound,
}

// inbLinkGone: detaching a link whose target (netns, cgroup) is already gone.
func inbLinkGone(err error) bool { return errors.Is(err, unix.ENOLINK) }

// inbVerifierError keeps the tail of a verifier log (the part that says why) in the error text.
func inbVerifierError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%w (verifier: %+3v)", err, ve)
	}
	return err
}
