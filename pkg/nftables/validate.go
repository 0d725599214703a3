package nftables

import (
	"fmt"
	"os/user"
	"regexp"
	"strconv"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

// nftWord is what nft reads as one bare word (an interface or group name): no wildcards (iptables' "eth+", nft's
// quoted "eth*"), no separators.
var nftWord = regexp.MustCompile(`^[A-Za-z_.][A-Za-z0-9_.-]*$`)

// Validate checks every value of c that reaches the transaction, the same checks as iptables mode (ports are
// numbers from 1 to 65535, so no ranges or service names; CIDRs; no -x '*'; numeric -u/-g; marks) plus what only
// nft would refuse later: interface and group names must be plain words. The error names the bad value.
func Validate(c capture.Config) (capture.Policy, error) {
	p, err := iptables.Validate(c)
	if err != nil {
		return p, err
	}
	for _, f := range []struct{ flag, val string }{
		{"-k/--kube-virt-interfaces", c.KubeVirtInterfaces},
		{"-c/--istio-exclude-interfaces", c.ExcludeInterfaces},
	} {
		for _, name := range capture.SplitList(f.val) {
			if !nftWord.MatchString(name) {
				return p, fmt.Errorf("invalid interface name %q for %s: nftables mode takes plain names (letters, digits, '_', '.', '-'), no wildcards", name, f.flag)
			}
		}
	}
	for _, g := range ownerGroups(c) {
		if !isNumber(g.name) && !nftWord.MatchString(g.name) {
			return p, fmt.Errorf("invalid group %q in %s: want a number or a group name", g.name, g.env)
		}
	}
	return p, nil
}

type ownerGroup struct{ name, env string }

// ownerGroups lists the groups that reach the rules: the include list unless it is "*", else the exclude list.
func ownerGroups(c capture.Config) []ownerGroup {
	var out []ownerGroup
	if c.OwnerGroupsInclude != "*" {
		for _, g := range capture.SplitList(c.OwnerGroupsInclude) {
			out = append(out, ownerGroup{g, capture.EnvOwnerGroups})
		}
		return out
	}
	for _, g := range capture.SplitList(c.OwnerGroupsExclude) {
		out = append(out, ownerGroup{g, capture.EnvOwnerGroupsExclude})
	}
	return out
}

func isNumber(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// GroupLookup reports whether a group name exists (nft resolves `skgid NAME` from /etc/group when it parses).
type GroupLookup func(name string) error

// OSGroupLookup looks a group up in this process's /etc/group (os/user).
func OSGroupLookup(name string) error {
	_, err := user.LookupGroup(name)
	return err
}

// CheckGroups refuses owner-group names that do not exist, before nft would fail on them at apply time.
func CheckGroups(c capture.Config, lookup GroupLookup) error {
	for _, g := range ownerGroups(c) {
		if isNumber(g.name) {
			continue
		}
		if err := lookup(g.name); err != nil {
			return fmt.Errorf("unknown group %q in %s: %w", g.name, g.env, err)
		}
	}
	return nil
}
