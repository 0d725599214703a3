package loader

// Owner groups (istio's rule 13, bpf/include/outbound.h mc_group_exempt): per config key, the numeric gids of
// ISTIO_OUTBOUND_OWNER_GROUPS or ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE in mc_groups, and which of the two they are in
// mc_config.flags. Written by SetPolicy with the rest of a policy, in the same order: entries a policy needs are
// added before the config value that uses them, stale ones removed after.

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/meshcap/meshcap/pkg/capture"
)

type groupKey = connect4McGroupKey

// groupsFlag is the mc_config flag of g: none without rule 13 (include "*" and no exclude list). An empty include
// list (ISTIO_OUTBOUND_OWNER_GROUPS="", istio's bare RETURN) is the include flag with nothing listed: every owner
// that reaches rule 13 returns, DNS capture included (Policy.OutboundNone already leaves the TCP include lists out).
func groupsFlag(g capture.OwnerGroups) uint8 {
	switch {
	case g.Include:
		return flagGroupsInclude
	case len(g.GIDs) > 0:
		return flagGroupsExclude
	default:
		return 0
	}
}

// writeGroups adds the gids of p's owner group list under cfgKey and returns their keys.
func (o *Objects) writeGroups(cfgKey uint64, p capture.Policy) (map[groupKey]bool, error) {
	want := map[groupKey]bool{}
	m := o.Maps[mapGroups]
	if m == nil {
		if len(p.OwnerGroups.GIDs) > 0 {
			return want, errors.New("attachment predates owner group capture: detach it, then attach again")
		}
		return want, nil
	}
	one := uint8(1)
	for _, gid := range p.OwnerGroups.GIDs {
		k := groupKey{Cfg: cfgKey, Gid: gid}
		want[k] = true
		if err := m.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return want, fmt.Errorf("write gid %d to %s: %w", gid, mapGroups, err)
		}
	}
	return want, nil
}

// deleteGroups removes the entries of cfgKey not in keep (all of them when keep is nil).
func (o *Objects) deleteGroups(cfgKey uint64, keep map[groupKey]bool) error {
	if o.Maps[mapGroups] == nil {
		return nil // an attachment from before owner group capture
	}
	return deleteWhere(o.Maps[mapGroups], func(k *groupKey) bool { return k.Cfg == cfgKey && !keep[*k] })
}
