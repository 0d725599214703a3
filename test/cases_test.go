package test

import (
	"fmt"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// captureCase is one row of the flag table that drives the eBPF, iptables and nftables end-to-end tests: the same
// istio-iptables flags must capture the same connections in every mode (istio's ISTIO_OUTPUT order, DEFAULTS.md §5).
type captureCase struct {
	name     string
	flags    []string     // capture flags given to `meshcap ebpf attach` or `meshcap iptables`
	dst      string       // destination of the client's connection
	cred     *podnet.Cred // client's uid/gid; nil = root
	captured bool         // the connection must go through the proxy
}

var (
	user    = &podnet.Cred{UID: 2000, GID: 2000}
	uid1337 = &podnet.Cred{UID: 1337, GID: 2000}
	gid1337 = &podnet.Cred{UID: 2000, GID: 1337}
)

func dst(prefixAddr string, port int) string { return fmt.Sprintf("%s:%d", prefixAddr, port) }

// captureCases: server addresses 198.18.0.2, 198.18.1.2, 198.18.2.2, each with ports 8080, 9090, 7070.
var captureCases = []captureCase{
	{"all captured", []string{"-i", "*"}, dst("198.18.0.2", 8080), nil, true},
	{"all captured, plain user", []string{"-i", "*"}, dst("198.18.1.2", 9090), user, true},
	{"proxy uid exempt", []string{"-i", "*"}, dst("198.18.0.2", 8080), uid1337, false},
	{"proxy gid exempt", []string{"-i", "*"}, dst("198.18.0.2", 8080), gid1337, false},
	{"second proxy uid exempt", []string{"-i", "*", "-u", "1337,2000", "-g", "1337"}, dst("198.18.0.2", 8080), user, false},
	{"no -i captures nothing", []string{}, dst("198.18.0.2", 8080), nil, false},
	{"-o port excluded", []string{"-i", "*", "-o", "9090"}, dst("198.18.0.2", 9090), nil, false},
	{"-o other port still captured", []string{"-i", "*", "-o", "9090"}, dst("198.18.0.2", 8080), nil, true},
	{"-x cidr excluded", []string{"-i", "*", "-x", "198.18.1.0/24"}, dst("198.18.1.2", 8080), nil, false},
	{"-x other cidr still captured", []string{"-i", "*", "-x", "198.18.1.0/24"}, dst("198.18.2.2", 8080), nil, true},
	{"-i list inside", []string{"-i", "198.18.1.0/24"}, dst("198.18.1.2", 7070), nil, true},
	{"-i list outside", []string{"-i", "198.18.1.0/24"}, dst("198.18.0.2", 7070), nil, false},
	{"-q adds port outside -i", []string{"-i", "198.18.1.0/24", "-q", "9090"}, dst("198.18.0.2", 9090), nil, true},
	{"-q other port outside -i", []string{"-i", "198.18.1.0/24", "-q", "9090"}, dst("198.18.0.2", 8080), nil, false},
	{"-x beats -q", []string{"-i", "*", "-x", "198.18.1.0/24", "-q", "8080"}, dst("198.18.1.2", 8080), nil, false},
	{"-o beats -q", []string{"-q", "8080", "-o", "8080"}, dst("198.18.0.2", 8080), nil, false},
	{"-x host inside -i list", []string{"-i", "198.18.0.0/16", "-x", "198.18.2.2/32"}, dst("198.18.2.2", 7070), nil, false},
}
