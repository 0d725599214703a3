// Package nfttest reads the nftables golden corpus's case table (testdata/istio-golden/nftables/cases.json): the
// istio-iptables flags, environment and host facts behind each golden. Only tests import it.
package nfttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshcap/meshcap/pkg/capture"
)

// Case is one row of cases.json (see its "about").
type Case struct {
	Name   string            `json:"name"`
	Golden string            `json:"golden"` // file name relative to the corpus directory
	Args   []string          `json:"args"`
	Env    map[string]string `json:"env"`
	V6     bool              `json:"v6"`     // the pod's address is IPv6
	Resolv *string           `json:"resolv"` // /etc/resolv.conf content; nil = not read
	Groups []string          `json:"groups"` // group names that must exist in /etc/group
	DNSV4  []string          `json:"dns_v4"` // DNS servers set directly, as istio's test does
	DNSV6  []string          `json:"dns_v6"`
	CLI    *bool             `json:"cli"` // false: not reproducible through the CLI
}

// Load reads dir/cases.json.
func Load(dir string) ([]Case, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cases.json"))
	if err != nil {
		return nil, err
	}
	var f struct{ Cases []Case }
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("cases.json: %w", err)
	}
	return f.Cases, nil
}

// ThroughCLI reports whether the case can be replayed through the CLI.
func (c Case) ThroughCLI() bool { return c.CLI == nil || *c.CLI }

// Config parses the case's flags and environment as the CLI does, with no istio-proxy user.
func (c Case) Config() (capture.Config, error) {
	cfg, _, err := capture.ParseArgs(c.Args, capture.MapEnv(c.Env))
	cfg.ResolveDefaultsWith(func(string) (string, error) { return "", errors.New("no such user") })
	return cfg, err
}

// Facts are the host facts of the case: IPv6 from the pod's address, DNS servers from its resolv.conf.
func (c Case) Facts() capture.HostFacts {
	f := capture.HostFacts{IPv6: c.V6, DNSServersV4: c.DNSV4, DNSServersV6: c.DNSV6}
	if c.Resolv != nil {
		f.DNSServersV4, f.DNSServersV6 = capture.ParseResolvConf([]byte(*c.Resolv))
	}
	return f
}
