package capture

import (
	"fmt"
	"os/user"
	"strconv"
)

// OwnerGroups is istio's rule 13 with numeric gids: the ISTIO_OUTBOUND_OWNER_GROUPS list (Include: only owners whose
// primary gid is listed are captured), or, when that is "*", the ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE list (owners
// whose primary gid is listed are not). Include with no GIDs is the empty include value (istio's bare RETURN, also
// Policy.OutboundNone); the zero value is no rule 13 (include "*", no exclude list).
type OwnerGroups struct {
	Include bool
	GIDs    []uint32 // in the user's order
}

// MaxOwnerGroups is istio's limit on the include list (one iptables rule holds at most 64 matches); Config.Policy
// refuses more for every backend.
const MaxOwnerGroups = 64

// OwnerGroup is one entry of the owner group list that reaches the rules, with the variable it came from.
type OwnerGroup struct{ Name, Env string }

// OwnerGroupList lists the groups that reach istio's rule 13: the include list unless it is "*", else the exclude
// list (istio ignores the exclude list beside an include list).
func (c Config) OwnerGroupList() []OwnerGroup {
	var out []OwnerGroup
	if c.OwnerGroupsInclude != "*" {
		for _, g := range SplitList(c.OwnerGroupsInclude) {
			out = append(out, OwnerGroup{g, EnvOwnerGroups})
		}
		return out
	}
	for _, g := range SplitList(c.OwnerGroupsExclude) {
		out = append(out, OwnerGroup{g, EnvOwnerGroupsExclude})
	}
	return out
}

// IsGIDNumber reports whether a group entry is a number, which iptables and nft take as a gid without a lookup.
func IsGIDNumber(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// GroupLookup returns the gid of a group name.
type GroupLookup func(name string) (uint32, error)

// OSGroupLookup looks a group name up in the /etc/group this process sees (os/user, no cgo needed), as iptables
// and nft resolve "--gid-owner NAME" and "skgid NAME" in the process that applies the rules.
func OSGroupLookup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has a non-numeric gid %q", name, g.Gid)
	}
	return uint32(n), nil
}

// ResolveOwnerGroups resolves c's owner group list to gids (numbers as they are, names through lookup). An unknown
// name is an error naming it and its variable, as applying istio's rules fails on it.
func (c Config) ResolveOwnerGroups(lookup GroupLookup) (OwnerGroups, error) {
	list := c.OwnerGroupList()
	out := OwnerGroups{Include: c.OwnerGroupsInclude != "*"}
	for _, g := range list {
		if IsGIDNumber(g.Name) {
			n, _ := strconv.ParseUint(g.Name, 10, 32)
			out.GIDs = append(out.GIDs, uint32(n))
			continue
		}
		gid, err := lookup(g.Name)
		if err != nil {
			return out, fmt.Errorf("unknown group %q in %s: %w", g.Name, g.Env, err)
		}
		out.GIDs = append(out.GIDs, gid)
	}
	return out, nil
}
