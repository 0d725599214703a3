package test

import (
	"fmt"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// captureCase is one row of the flag table that drives every capture backend through the real CLI: the same
// istio-iptables flags must capture the same connections as istio's rules (ISTIO_OUTPUT order, DEFAULTS.md §5).
// captured is what istio's rules do (asserted for the iptables and nftables backends).
// eBPF mode must do the same, except where the row says otherwise, and then only in one of two explicit ways:
// it refuses the flags (nothing attached: the user gets the iptables mode through `init --mode auto`), or the row
// names a documented gap (docs/ipv6-dns.md) and eBPF does the opposite of istio today. No row lets eBPF mode
// capture less unnoticed.
type captureCase struct {
	name     string
	flags    []string          // capture flags given to `meshcap ebpf attach` or `meshcap iptables`
	env      map[string]string // environment-only settings (owner groups), set for the capture command
	dst      string            // destination of the client's connection
	family6  bool              // dial from an AF_INET6 socket (IPv4-mapped destinations)
	bind     string            // source address the client binds before connecting
	reached  string            // address the connection must end at; "" = dst
	cred     *podnet.Cred      // client's uid/gid; nil = root
	captured bool              // the connection goes through the proxy under istio's rules
	ebpf     ebpfExpect
	nftDiff  string // nftables mode captures the opposite of iptables mode here, by design (nftables/CASES.md §E)
	// dns: dst is a DNS server and the client asks it over "udp" (unconnected), "connected" (UDP) or "tcp";
	// captured = answered through the sidecar (15053, or 15001 for TCP outside the DNS rules). The pod's
	// resolv.conf lists tableNameservers.
	dns string
}

// ebpfExpect is how eBPF mode differs from istio's rules for a row (zero value: it does not).
type ebpfExpect struct {
	refused string // `ebpf attach` fails with an error naming this, and nothing is attached
	gap     string // eBPF mode captures the opposite of istio today, for this documented reason
}

var (
	user     = &podnet.Cred{UID: 2000, GID: 2000}
	uid1337  = &podnet.Cred{UID: 1337, GID: 2000}
	gid1337  = &podnet.Cred{UID: 2000, GID: 1337}
	user2001 = &podnet.Cred{UID: 2001, GID: 2001}
	gid0     = &podnet.Cred{UID: 2000, GID: 0} // primary group "root", for the owner-group rows by name
)

func dst(prefixAddr string, port int) string { return fmt.Sprintf("%s:%d", prefixAddr, port) }

// Dual-stack rows: the client and the server pods also have these IPv6 addresses (after their IPv4 ones, so
// istio enables IPv6 only with --dual-stack), the server listens on them, and the client pod listens on
// 0.0.0.0:7171 for the lo-interface rows and on [::1]:7172 for the IPv6 one.
const (
	server6  = "[fd00:198:18::2]"
	mapped   = "[::ffff:198.18.0.2]"
	ownPort  = 7171
	ownPort6 = 7172 // the client pod's [::1] listener, for the IPv6 loopback row
)

var ownIP = clientIP.Addr().String()

// dnsFlags capture DNS but no other TCP to the DNS servers (198.18.2.0/24 holds none), so that a captured DNS row
// went through 15053.
var dnsFlags = []string{"-i", "198.18.2.0/24", "--redirect-dns"}

// tableNameservers is the client pod's resolv.conf in the table: what every backend's capture command and the
// proxy read.
const tableNameservers = "nameserver 198.18.0.2\nnameserver fd00:198:18::2\n"

// captureCases: server addresses 198.18.0.2, 198.18.1.2, 198.18.2.2 and fd00:198:18::2, each with ports 8080,
// 9090, 7070.
var captureCases = []captureCase{
	{name: "all captured", flags: []string{"-i", "*"}, dst: dst("198.18.0.2", 8080), captured: true},
	{name: "all captured, plain user", flags: []string{"-i", "*"}, dst: dst("198.18.1.2", 9090), cred: user, captured: true},
	{name: "proxy uid exempt", flags: []string{"-i", "*"}, dst: dst("198.18.0.2", 8080), cred: uid1337},
	{name: "proxy gid exempt", flags: []string{"-i", "*"}, dst: dst("198.18.0.2", 8080), cred: gid1337},
	{name: "second proxy uid exempt", flags: []string{"-i", "*", "-u", "1337,2000", "-g", "1337"}, dst: dst("198.18.0.2", 8080), cred: user},
	{name: "no -i captures nothing", flags: []string{}, dst: dst("198.18.0.2", 8080)},
	{name: "-o port excluded", flags: []string{"-i", "*", "-o", "9090"}, dst: dst("198.18.0.2", 9090)},
	{name: "-o other port still captured", flags: []string{"-i", "*", "-o", "9090"}, dst: dst("198.18.0.2", 8080), captured: true},
	{name: "-x cidr excluded", flags: []string{"-i", "*", "-x", "198.18.1.0/24"}, dst: dst("198.18.1.2", 8080)},
	{name: "-x other cidr still captured", flags: []string{"-i", "*", "-x", "198.18.1.0/24"}, dst: dst("198.18.2.2", 8080), captured: true},
	{name: "-i list inside", flags: []string{"-i", "198.18.1.0/24"}, dst: dst("198.18.1.2", 7070), captured: true},
	{name: "-i list outside", flags: []string{"-i", "198.18.1.0/24"}, dst: dst("198.18.0.2", 7070)},
	{name: "-q adds port outside -i", flags: []string{"-i", "198.18.1.0/24", "-q", "9090"}, dst: dst("198.18.0.2", 9090), captured: true},
	{name: "-q other port outside -i", flags: []string{"-i", "198.18.1.0/24", "-q", "9090"}, dst: dst("198.18.0.2", 8080)},
	{name: "-x beats -q", flags: []string{"-i", "*", "-x", "198.18.1.0/24", "-q", "8080"}, dst: dst("198.18.1.2", 8080)},
	{name: "-o beats -q", flags: []string{"-q", "8080", "-o", "8080"}, dst: dst("198.18.0.2", 8080)},
	{name: "-x host inside -i list", flags: []string{"-i", "198.18.0.0/16", "-x", "198.18.2.2/32"}, dst: dst("198.18.2.2", 7070)},

	// IPv6 and dual stack. istio enables IPv6 from the pod's addresses (first one, or any with --dual-stack) and then
	// writes the ip6tables twin of its rules; eBPF mode captures native IPv6 exactly then (Policy.ForPod).
	{name: "IPv6 with --dual-stack", flags: []string{"-i", "*", "--dual-stack"}, dst: dst(server6, 8080), captured: true},
	{name: "IPv6 plain user with --dual-stack", flags: []string{"-i", "*", "--dual-stack"}, dst: dst(server6, 9090), cred: user, captured: true},
	{name: "IPv6 -x v6 cidr with --dual-stack", flags: []string{"-i", "*", "-x", "fd00:198:18::/64", "--dual-stack"}, dst: dst(server6, 9090)},
	{name: "IPv6 -x v4 cidr only: still captured", flags: []string{"-i", "*", "-x", "198.18.0.0/16", "--dual-stack"}, dst: dst(server6, 9090), captured: true},
	{name: "IPv6 -i v6 cidr inside", flags: []string{"-i", "fd00:198:18::/64", "--dual-stack"}, dst: dst(server6, 7070), captured: true},
	{name: "IPv6 -i v4 cidr only: no IPv6 redirect", flags: []string{"-i", "198.18.0.0/16", "--dual-stack"}, dst: dst(server6, 7070)},
	{name: "IPv6 -q port outside -i", flags: []string{"-i", "198.18.0.0/16", "-q", "7070", "--dual-stack"}, dst: dst(server6, 7070), captured: true},
	{name: "IPv6 -o port", flags: []string{"-i", "*", "-o", "8080", "--dual-stack"}, dst: dst(server6, 8080)},
	{name: "IPv6 proxy uid exempt with --dual-stack", flags: []string{"-i", "*", "--dual-stack"}, dst: dst(server6, 8080), cred: uid1337},
	{name: "IPv6 proxy gid exempt with --dual-stack", flags: []string{"-i", "*", "--dual-stack"}, dst: dst(server6, 8080), cred: gid1337},
	{name: "IPv6 ::1 never captured", flags: []string{"-i", "*", "--dual-stack"}, dst: dst("[::1]", ownPort6), cred: user},
	{name: "IPv6 without --dual-stack, first address IPv4: istio writes no IPv6 rules", flags: []string{"-i", "*"}, dst: dst(server6, 8080),
		nftDiff: "one inet table: its rules without an address match see IPv6 too (TestNftablesIPv6CapturedInIPv4Pod)"},
	{name: "IPv4-mapped from an AF_INET6 socket", flags: []string{"-i", "*"}, dst: dst(mapped, 8080), family6: true,
		reached: dst("198.18.0.2", 8080), captured: true},
	{name: "IPv4-mapped -o port", flags: []string{"-i", "*", "-o", "8080"}, dst: dst(mapped, 8080), family6: true,
		reached: dst("198.18.0.2", 8080)},
	{name: "IPv4-mapped proxy uid exempt", flags: []string{"-i", "*"}, dst: dst(mapped, 8080), family6: true, cred: uid1337,
		reached: dst("198.18.0.2", 8080)},
	{name: "IPv4-mapped -i cidr", flags: []string{"-i", "198.18.0.0/24"}, dst: dst(mapped, 8080), family6: true,
		reached: dst("198.18.0.2", 8080), captured: true},
	{name: "IPv4-mapped outside -i", flags: []string{"-i", "198.18.1.0/24"}, dst: dst(mapped, 8080), family6: true,
		reached: dst("198.18.0.2", 8080)},
	{name: "IPv4-mapped from an AF_INET6 socket, dual stack", flags: []string{"-i", "*", "--dual-stack"}, dst: dst(mapped, 8080), family6: true,
		reached: dst("198.18.0.2", 8080), captured: true},
	{name: "IPv4-mapped -x cidr", flags: []string{"-i", "*", "-x", "198.18.0.0/24"}, dst: dst(mapped, 8080), family6: true,
		reached: dst("198.18.0.2", 8080)},

	// DNS capture (rules 9, 11c, 12c, 14): port 53 of the resolv.conf servers (tableNameservers: 198.18.0.2 and
	// fd00:198:18::2) goes to the sidecar's 15053, every port 53 with --capture-all-dns; other TCP is unchanged.
	{name: "--redirect-dns", flags: []string{"-i", "*", "--redirect-dns"}, dst: dst("198.18.0.2", 8080), captured: true},
	{name: "DNS udp to a resolv.conf server", flags: dnsFlags, dst: dst("198.18.0.2", 53), dns: "udp", captured: true},
	{name: "DNS connected udp to a resolv.conf server", flags: dnsFlags, dst: dst("198.18.0.2", 53), dns: "connected", captured: true},
	{name: "DNS tcp to a resolv.conf server", flags: dnsFlags, dst: dst("198.18.0.2", 53), dns: "tcp", captured: true},
	{name: "DNS udp IPv4-mapped resolv.conf server", flags: dnsFlags, dst: dst(mapped, 53), dns: "udp", captured: true},
	{name: "DNS tcp IPv4-mapped resolv.conf server", flags: dnsFlags, dst: dst(mapped, 53), dns: "tcp", captured: true},
	{name: "DNS udp without --redirect-dns", flags: []string{"-i", "*"}, dst: dst("198.18.0.2", 53), dns: "udp"},
	{name: "DNS udp to a server outside resolv.conf", flags: dnsFlags, dst: dst("198.18.1.2", 53), dns: "udp"},
	{name: "DNS tcp to a server outside resolv.conf", flags: dnsFlags, dst: dst("198.18.1.2", 53), dns: "tcp"},
	{name: "DNS udp, --capture-all-dns", flags: append(dnsFlags, "--capture-all-dns"), dst: dst("198.18.1.2", 53), dns: "udp", captured: true},
	{name: "DNS tcp, --capture-all-dns", flags: append(dnsFlags, "--capture-all-dns"), dst: dst("198.18.1.2", 53), dns: "tcp", captured: true},
	{name: "DNS --capture-all-dns alone does nothing", flags: []string{"-i", "198.18.2.0/24", "--capture-all-dns"}, dst: dst("198.18.1.2", 53), dns: "udp"},
	{name: "DNS proxy uid exempt", flags: dnsFlags, dst: dst("198.18.0.2", 53), dns: "udp", cred: uid1337},
	{name: "DNS proxy gid exempt", flags: dnsFlags, dst: dst("198.18.0.2", 53), dns: "tcp", cred: gid1337},
	{name: "DNS -o 53 exempt", flags: append(dnsFlags, "-o", "53"), dst: dst("198.18.0.2", 53), dns: "udp"},
	{name: "DNS IPv6 server, pod IPv4 to istio (no ip6tables rules)", flags: dnsFlags, dst: dst(server6, 53), dns: "udp"},
	{name: "DNS IPv6 server with --dual-stack", flags: append(dnsFlags, "--dual-stack"), dst: dst(server6, 53), dns: "udp", captured: true},

	// Owner groups (environment only).
	{name: "owner groups empty captures nothing", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": ""},
		dst: dst("198.18.0.2", 8080), cred: user},
	{name: "owner groups empty beats -q", flags: []string{"-q", "8080"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": ""},
		dst: dst("198.18.0.2", 8080), cred: user},
	{name: "owner groups empty: proxy uid to its own pod IP still goes inbound (rule 11a before 13)", flags: []string{"-i", "*"},
		env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": ""}, dst: dst(ownIP, ownPort), cred: uid1337, captured: true},
	// Rule 13 with lists: names resolve in the /etc/group of the capture command ("root" is gid 0 everywhere, the
	// VMs included); eBPF mode resolves them too and compares the primary gid, as "-m owner --gid-owner".
	{name: "owner groups include, member", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2000"},
		dst: dst("198.18.0.2", 8080), cred: user, captured: true},
	{name: "owner groups include, not member", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2000"},
		dst: dst("198.18.0.2", 8080), cred: user2001},
	{name: "owner groups include by name, member", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2001,root"},
		dst: dst("198.18.0.2", 8080), cred: gid0, captured: true},
	{name: "owner groups include by name, not member", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2001,root"},
		dst: dst("198.18.0.2", 8080), cred: user},
	{name: "owner groups include, -g still exempt (rule 12 before 13)", flags: []string{"-i", "*"},
		env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "1337"}, dst: dst("198.18.0.2", 8080), cred: gid1337},
	{name: "owner groups exclude", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"},
		dst: dst("198.18.0.2", 8080), cred: user},
	{name: "owner groups exclude, other group", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"},
		dst: dst("198.18.0.2", 8080), cred: user2001, captured: true},
	{name: "owner groups exclude by name", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2001,root"},
		dst: dst("198.18.0.2", 8080), cred: gid0},
	{name: "owner groups exclude ignored beside an include list", flags: []string{"-i", "*"},
		env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2000", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"},
		dst: dst("198.18.0.2", 8080), cred: user, captured: true},
	{name: "IPv6 owner groups include, member with --dual-stack", flags: []string{"-i", "*", "--dual-stack"},
		env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2000"}, dst: dst(server6, 9090), cred: user, captured: true},
	{name: "IPv6 owner groups include, not member with --dual-stack", flags: []string{"-i", "*", "--dual-stack"},
		env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2000"}, dst: dst(server6, 9090), cred: user2001},
	{name: "IPv6 owner groups exclude with --dual-stack", flags: []string{"-i", "*", "--dual-stack"},
		env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"}, dst: dst(server6, 9090), cred: user},
	{name: "IPv4-mapped owner groups exclude", flags: []string{"-i", "*"}, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"},
		dst: dst(mapped, 8080), family6: true, reached: dst("198.18.0.2", 8080), cred: user},
	{name: "DNS owner groups include, member", flags: dnsFlags, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2000"},
		dst: dst("198.18.0.2", 53), dns: "udp", cred: user, captured: true},
	{name: "DNS owner groups include, not member (rule 13 before 14)", flags: dnsFlags, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "2000"},
		dst: dst("198.18.0.2", 53), dns: "udp", cred: user2001},
	{name: "DNS owner groups empty: not captured (rule 13's bare RETURN before 14)", flags: dnsFlags,
		env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": ""}, dst: dst("198.18.0.2", 53), dns: "udp", cred: user},
	{name: "DNS owner groups exclude", flags: dnsFlags, env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"},
		dst: dst("198.18.0.2", 53), dns: "tcp", cred: user},

	// The lo interface (DEFAULTS.md §5 rules 10, 11a, 11b, 15) and 0.0.0.0.
	{name: "127.0.0.1 never captured", flags: []string{"-i", "*"}, dst: dst("127.0.0.1", ownPort), cred: user},
	{name: "0.0.0.0 goes over lo: not captured", flags: []string{"-i", "*"}, dst: dst("0.0.0.0", ownPort), reached: dst("127.0.0.1", ownPort), cred: user},
	{name: "0.0.0.0 from an AF_INET6 socket goes over lo: not captured", flags: []string{"-i", "*"}, dst: dst("[::ffff:0.0.0.0]", ownPort),
		family6: true, reached: dst("127.0.0.1", ownPort), cred: user},
	{name: "0.0.0.0 as the proxy uid is 127.0.0.1: direct", flags: []string{"-i", "*"}, dst: dst("0.0.0.0", ownPort), reached: dst("127.0.0.1", ownPort),
		cred: uid1337},
	{name: "0.0.0.0 bound to its own pod IP as the proxy uid goes to the inbound listener", flags: []string{"-i", "*"}, dst: dst("0.0.0.0", ownPort),
		bind: ownIP, reached: dst(ownIP, ownPort), cred: uid1337, captured: true},
	{name: "app to its own pod IP goes over lo: not captured", flags: []string{"-i", "*"}, dst: dst(ownIP, ownPort), cred: user},
	{name: "app to its own pod IP from an AF_INET6 socket goes over lo: not captured", flags: []string{"-i", "*"}, dst: dst("[::ffff:"+ownIP+"]", ownPort),
		family6: true, reached: dst(ownIP, ownPort), cred: user},
	{name: "proxy uid to its own pod IP on an -o port: direct (rule 9 before 11a)", flags: []string{"-i", "*", "-o", "7171"}, dst: dst(ownIP, ownPort),
		cred: uid1337},
	{name: "proxy uid from 127.0.0.6 to its own pod IP goes direct (rule 10 before 11a)", flags: []string{"-i", "*"}, dst: dst(ownIP, ownPort),
		bind: "127.0.0.6", cred: uid1337},
	{name: "app from 127.0.0.6 to its own pod IP goes over lo: not captured", flags: []string{"-i", "*"}, dst: dst(ownIP, ownPort),
		bind: "127.0.0.6", cred: user},
	{name: "proxy uid to its own pod IP goes to the inbound listener", flags: []string{"-i", "*"}, dst: dst(ownIP, ownPort), cred: uid1337, captured: true},
	{name: "proxy uid to its own pod IP, no -i: still the inbound listener", flags: []string{}, dst: dst(ownIP, ownPort), cred: uid1337, captured: true},
	{name: "proxy uid to 127.0.0.2 goes to the inbound listener (rule 11a: ! -d 127.0.0.1/32)", flags: []string{"-i", "*"}, dst: dst("127.0.0.2", ownPort),
		cred: uid1337, captured: true},
	{name: "proxy uid to 127.0.0.2 inside the loopback CIDR: direct", flags: []string{"-i", "*"},
		env: map[string]string{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.0/8"}, dst: dst("127.0.0.2", ownPort), cred: uid1337},
	{name: "proxy gid (not uid) to its own pod IP: returned by the uid's lo rule (11b before 12a)", flags: []string{"-i", "*"}, dst: dst(ownIP, ownPort),
		cred: gid1337},
	{name: "second proxy uid to its own pod IP: returned by the first uid's lo rule", flags: []string{"-i", "*", "-u", "1337,2000"}, dst: dst(ownIP, ownPort),
		cred: user},
	{name: "proxy uid to its own pod IP from an AF_INET6 socket goes to the inbound listener", flags: []string{"-i", "*"},
		dst: dst("[::ffff:"+ownIP+"]", ownPort), family6: true, reached: dst(ownIP, ownPort), cred: uid1337, captured: true},
}
