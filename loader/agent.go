package loader

// Node-agent mode (DaemonSet): one shared attachment at the pods' cgroup root (AttachShared), per-pod settings keyed
// by network-namespace cookie in its pinned settings maps, and per-pod inbound attachments under
// <pin root>/netns-<cookie>/inbound. This file holds the pieces only the agent and meshcap-cni use:
//   - AttachAgent: AttachShared plus the removal of any netns-0 ("every netns") settings, so that only enrolled
//     pods are captured even on a cgroup that was once attached in per-pod mode;
//   - EnrollNetns / UnenrollNetns / EnrolledNetns: per-pod settings on the live attachment, serialised by a lock
//     on the pin directory, and written in place (no moment without settings for a pod already enrolled);
//   - UninstallAll: detach and unpin every outbound and inbound attachment under a pin root.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/meshcap/meshcap/pkg/capture"
)

// AgentAttachment is the result of AttachAgent.
type AgentAttachment struct {
	*Attachment
	ClearedAnyNetns bool // netns-0 settings (per-pod mode leftovers) were found and removed
	Enrolled        int  // netns with settings after the attach (kept from before a restart)
}

// AttachAgent attaches (or, on a restart or upgrade, re-attaches) the outbound programs at cgroupDir in node-agent
// mode. An existing attachment keeps its links and every map (settings and connection state): the programs are
// swapped in with link updates, so no established connection loses its answers and no new connection of an enrolled
// pod goes uncaptured. Netns-0 settings, which would capture every process under cgroupDir, are removed.
func AttachAgent(cgroupDir, pinRoot string, opts LoadOptions) (*AgentAttachment, error) {
	a, err := AttachShared(cgroupDir, pinRoot, opts)
	if err != nil {
		return nil, err
	}
	res := &AgentAttachment{Attachment: a}
	unlock, err := lockDir(a.PinDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	objs, err := OpenPinned(a.PinDir)
	if err != nil {
		return nil, err
	}
	defer objs.Close()
	var cfg configValue
	if objs.Maps[mapConfig].Lookup(uint64(0), &cfg) == nil {
		if err := objs.DeletePolicy(0); err != nil {
			return nil, fmt.Errorf("remove netns-0 settings of %s: %w", cgroupDir, err)
		}
		res.ClearedAnyNetns = true
	}
	keys, err := configKeys(objs)
	if err != nil {
		return nil, err
	}
	res.Enrolled = len(keys)
	return res, nil
}

// EnrollNetns writes policy p for the network namespace with this cookie into the attachment pinned in pinDir (a
// cgroup-<id> directory made by AttachAgent). Idempotent, and in place: the port and CIDR entries p needs are added
// first, then the config value is replaced (one atomic map update), then entries p no longer has are removed, so a
// pod already enrolled is never without settings, and re-enrolling with the same policy changes nothing.
func EnrollNetns(pinDir string, netnsCookie uint64, p capture.Policy) error {
	if netnsCookie == 0 {
		return errors.New("enroll: netns cookie 0 is reserved (it would capture every netns under the cgroup)")
	}
	cfg, err := configFor(p)
	if err != nil {
		return err
	}
	objs, release, err := openLocked(pinDir)
	if err != nil {
		return err
	}
	defer release()

	one := uint8(1)
	wantLPM := map[string]map[lpmKey]bool{mapCIDRExcl: {}, mapCIDRIncl: {}}
	for name, cidrs := range map[string][]netip.Prefix{mapCIDRExcl: p.OutboundExcludeCIDRs, mapCIDRIncl: p.OutboundIncludeCIDRs} {
		for _, c := range cidrs {
			if !c.Addr().Is4() {
				continue // IPv4 programs (as SetPolicy)
			}
			k := newLPMKey(netnsCookie, c)
			wantLPM[name][k] = true
			if err := objs.Maps[name].Update(&k, &one, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("write CIDR %s to %s: %w", c, name, err)
			}
		}
	}
	wantPorts := map[portKey]bool{}
	for _, set := range []struct {
		kind  uint8
		ports []uint16
	}{{portOutExclude, p.OutboundExcludePorts}, {portOutInclude, p.OutboundIncludePorts}} {
		for _, port := range set.ports {
			k := portKey{Cfg: netnsCookie, Port: port, Kind: set.kind}
			wantPorts[k] = true
			if err := objs.Maps[mapPorts].Update(&k, &one, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("write port %d to %s: %w", port, mapPorts, err)
			}
		}
	}
	if err := objs.Maps[mapConfig].Update(&netnsCookie, &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write %s: %w", mapConfig, err)
	}
	// Stale entries of an earlier policy of this netns.
	for _, name := range []string{mapCIDRExcl, mapCIDRIncl} {
		var k lpmKey
		var v uint8
		var stale []lpmKey
		it := objs.Maps[name].Iterate()
		for it.Next(&k, &v) {
			if uint64(k.CfgHi)<<32|uint64(k.CfgLo) == netnsCookie && !wantLPM[name][k] {
				stale = append(stale, k)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("iterate %s: %w", name, err)
		}
		for _, k := range stale {
			if err := objs.Maps[name].Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from %s: %w", name, err)
			}
		}
	}
	var pk portKey
	var v uint8
	var stale []portKey
	it := objs.Maps[mapPorts].Iterate()
	for it.Next(&pk, &v) {
		if pk.Cfg == netnsCookie && !wantPorts[pk] {
			stale = append(stale, pk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", mapPorts, err)
	}
	for _, k := range stale {
		if err := objs.Maps[mapPorts].Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", mapPorts, err)
		}
	}
	return nil
}

// UnenrollNetns removes the settings of the network namespace with this cookie (capture of its new connections
// stops at once; connections already captured keep their state). Idempotent.
func UnenrollNetns(pinDir string, netnsCookie uint64) error {
	if netnsCookie == 0 {
		return errors.New("unenroll: netns cookie 0 is reserved")
	}
	objs, release, err := openLocked(pinDir)
	if err != nil {
		return err
	}
	defer release()
	return objs.DeletePolicy(netnsCookie)
}

// EnrolledNetns returns the netns cookies that have settings in the attachment pinned in pinDir.
func EnrolledNetns(pinDir string) ([]uint64, error) {
	objs, err := OpenPinned(pinDir)
	if err != nil {
		return nil, err
	}
	defer objs.Close()
	return configKeys(objs)
}

// NetnsEnrolled reports whether the netns with this cookie has settings in the attachment pinned in pinDir.
func NetnsEnrolled(pinDir string, netnsCookie uint64) (bool, error) {
	m, err := ebpf.LoadPinnedMap(mapPin(pinDir, mapConfig), nil)
	if err != nil {
		return false, fmt.Errorf("open pinned map %s: %w", mapConfig, err)
	}
	defer m.Close()
	var cfg configValue
	switch err := m.Lookup(&netnsCookie, &cfg); {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("look up %s: %w", mapConfig, err)
	}
}

func configKeys(objs *Objects) ([]uint64, error) {
	var k uint64
	var cfg configValue
	var keys []uint64
	it := objs.Maps[mapConfig].Iterate()
	for it.Next(&k, &cfg) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", mapConfig, err)
	}
	return keys, nil
}

// Uninstalled lists what UninstallAll removed.
type Uninstalled struct {
	Outbound []string // cgroup-<id> pin dirs
	Inbound  []uint64 // netns cookies of inbound attachments
}

// UninstallAll detaches and unpins every outbound attachment (DetachAll) and every inbound attachment, live netns
// or not, under pinRoot ("" = DefaultPinRoot), then removes pinRoot when nothing else is left in it.
func UninstallAll(pinRoot string) (*Uninstalled, error) {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	res := &Uninstalled{}
	var errs []error
	dirs, err := DetachAll(pinRoot)
	res.Outbound = dirs
	if err != nil {
		errs = append(errs, err)
	}
	cookies, err := DetachAllInbound(pinRoot)
	res.Inbound = cookies
	if err != nil {
		errs = append(errs, err)
	}
	removeIfEmpty(pinRoot)
	return res, errors.Join(errs...)
}

// openLocked takes the pin dir's lock and opens the pinned maps: every per-pod settings writer does both.
// release closes the maps and drops the lock.
func openLocked(pinDir string) (*Objects, func(), error) {
	unlock, err := lockDir(pinDir)
	if err != nil {
		return nil, nil, err
	}
	objs, err := OpenPinned(pinDir)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return objs, func() { objs.Close(); unlock() }, nil
}
