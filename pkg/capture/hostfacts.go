package capture

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
)

// ErrNoLocalAddress is istio's "no valid local IP address found".
var ErrNoLocalAddress = errors.New("no valid local IP address found")

// DetectIPv6 decides whether IPv6 is enabled from interface addresses in net.InterfaceAddrs() order, as istio does:
// loopback, link-local unicast and link-local multicast addresses are skipped; without dualStack the first remaining
// address decides, with dualStack any remaining IPv6 address enables IPv6. No remaining address is an error.
// IPv4-mapped IPv6 addresses count as IPv6.
func DetectIPv6(addrs []netip.Addr, dualStack bool) (bool, error) {
	found := false
	for _, a := range addrs {
		if !a.IsValid() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
			continue
		}
		v6 := !a.Is4()
		if !dualStack {
			return v6, nil
		}
		found = true
		if v6 {
			return true, nil
		}
	}
	if !found {
		return false, ErrNoLocalAddress
	}
	return false, nil
}

// InterfaceAddrs returns the addresses of the current network namespace in net.InterfaceAddrs() order.
// Real IPv4 addresses (which Go may hold in 16-byte form) are returned as IPv4.
func InterfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		default:
			continue
		}
		if ip4 := ip.To4(); ip4 != nil {
			ip = ip4
		}
		if addr, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, addr)
		}
	}
	return out, nil
}

// ParseResolvConf returns the nameserver addresses of a resolv.conf, split into IPv4 and IPv6 and written in
// canonical form (netip.Addr.String(): "::127.0.0.53" -> "::7f00:35", "FD00::A" -> "fd00::a"). An IPv4-mapped
// address counts as IPv6. Unparsable entries are skipped.
func ParseResolvConf(data []byte) (v4, v6 []string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		host := f[1]
		if i := strings.IndexByte(host, '%'); i >= 0 { // zone: the address without it
			host = host[:i]
		}
		a, err := netip.ParseAddr(host)
		if err != nil {
			continue
		}
		if a.Is4() {
			v4 = append(v4, a.String())
		} else {
			v6 = append(v6, a.String())
		}
	}
	return v4, v6
}

// HostFacts are the values istio takes from the pod's network namespace and files rather than from flags
// (DEFAULTS.md section 4). The iptables backend builds its rules from them; EBPFUnsupported decides from them what
// eBPF capture cannot cover.
type HostFacts struct {
	IPv6 bool // IPv6 enabled: see DetectIPv6
	// LocalAddrs are every interface address of the netns (loopback and link-local included): the destinations
	// the kernel routes over lo, which istio's "-o lo" rules match. The eBPF programs get them (Policy.LocalAddrs).
	LocalAddrs []netip.Addr
	// DNS servers in canonical text form (see ParseResolvConf), used when --redirect-dns is on and
	// --capture-all-dns is off. They are inserted verbatim with /32 or /128 appended.
	DNSServersV4 []string
	DNSServersV6 []string
}

// DNSCapture reports whether istio's DNS rules are in effect: --redirect-dns with --capture-all-dns, or with at
// least one resolv.conf server (without servers istio silently turns DNS capture off).
func (c Config) DNSCapture(h HostFacts) bool {
	return c.RedirectDNS && (c.CaptureAllDNS || len(h.DNSServersV4) > 0 || len(h.DNSServersV6) > 0)
}

// AgentDNSPort is istio's fixed agent DNS port, where DNS capture sends the pod's DNS (DEFAULTS.md §3).
const AgentDNSPort = 15053

// DNSPolicy is the DNS capture of c for a pod with facts h: zero unless DNSCapture holds; then every server of h
// (none needed with --capture-all-dns, which captures every port-53 destination).
func (c Config) DNSPolicy(h HostFacts) DNSPolicy {
	if !c.DNSCapture(h) {
		return DNSPolicy{}
	}
	p := DNSPolicy{Port: AgentDNSPort, All: c.CaptureAllDNS}
	if p.All {
		return p
	}
	for _, s := range append(append([]string{}, h.DNSServersV4...), h.DNSServersV6...) {
		if a, err := netip.ParseAddr(s); err == nil {
			p.Servers = append(p.Servers, a)
		}
	}
	return p
}

// HostSource supplies host facts; the zero value reads the current netns and /etc/resolv.conf.
type HostSource struct {
	Addrs      func() ([]netip.Addr, error) // default InterfaceAddrs
	ResolvConf func() ([]byte, error)       // default reads /etc/resolv.conf
}

// Facts gathers the host facts c needs (read-only: interface addresses of the current netns, /etc/resolv.conf): IPv6 detection always, DNS servers only when --redirect-dns is on and
// --capture-all-dns is off (as istio). A missing resolv.conf means no servers.
func (h HostSource) Facts(c Config) (HostFacts, error) {
	var f HostFacts
	addrs := h.Addrs
	if addrs == nil {
		addrs = InterfaceAddrs
	}
	list, err := addrs()
	if err != nil {
		return f, err
	}
	f.LocalAddrs = list
	f.IPv6, err = DetectIPv6(list, c.DualStack)
	if err != nil && !errors.Is(err, ErrNoLocalAddress) {
		return f, err
	}
	// ErrNoLocalAddress is returned with the DNS servers read: eBPF capture still needs them there.
	if c.RedirectDNS && !c.CaptureAllDNS {
		read := h.ResolvConf
		if read == nil {
			read = func() ([]byte, error) { return os.ReadFile("/etc/resolv.conf") }
		}
		data, rerr := read()
		if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return f, rerr
		}
		f.DNSServersV4, f.DNSServersV6 = ParseResolvConf(data)
	}
	return f, err
}
