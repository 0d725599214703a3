package nftables

import (
	"fmt"
	"regexp"

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
	for _, g := range c.OwnerGroupList() {
		if !capture.IsGIDNumber(g.Name) && !nftWord.MatchString(g.Name) {
			return p, fmt.Errorf("invalid group %q in %s: want a number or a group name", g.Name, g.Env)
		}
	}
	return p, nil
}
