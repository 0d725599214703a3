package capture

import (
	"fmt"
	"os"
	"os/user"
	"strconv"

	"github.com/spf13/pflag"
)

// LookupEnv reads one environment variable, like os.LookupEnv. Tests inject a map-backed one.
type LookupEnv func(name string) (string, bool)

// MapEnv turns a map into a LookupEnv (for tests and callers that carry their own environment).
func MapEnv(m map[string]string) LookupEnv {
	return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
}

// Environment variable names, as istio-iptables reads them (DEFAULTS.md section 2).
const (
	EnvInboundCapturePort     = "INBOUND_CAPTURE_PORT"
	EnvInboundTunnelPort      = "INBOUND_TUNNEL_PORT"
	EnvProxyUID               = "PROXY_UID"
	EnvProxyGID               = "PROXY_GID"
	EnvInterceptionMode       = "ISTIO_INBOUND_INTERCEPTION_MODE"
	EnvTProxyMark             = "ISTIO_INBOUND_TPROXY_MARK"
	EnvTProxyRouteTable       = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE"
	EnvInboundPorts           = "ISTIO_INBOUND_PORTS"
	EnvLocalExcludePorts      = "ISTIO_LOCAL_EXCLUDE_PORTS"
	EnvServiceCIDR            = "ISTIO_SERVICE_CIDR"
	EnvServiceExcludeCIDR     = "ISTIO_SERVICE_EXCLUDE_CIDR"
	EnvOutboundPorts          = "ISTIO_OUTBOUND_PORTS"
	EnvLocalOutboundPortsExcl = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"
	EnvKubeVirtInterfaces     = "KUBE_VIRT_INTERFACES"
	EnvExcludeInterfaces      = "ISTIO_EXCLUDE_INTERFACES"
	EnvDryRun                 = "DRY_RUN"
	EnvRedirectDNS            = "REDIRECT_DNS"
	EnvRedirectDNSExtra       = "ISTIO_META_DNS_CAPTURE"
	EnvCaptureAllDNS          = "CAPTURE_ALL_DNS"
	EnvDropInvalid            = "DROP_INVALID"
	EnvDropInvalidExtra       = "INVALID_DROP"
	EnvDualStack              = "DUAL_STACK"
	EnvDualStackExtra         = "ISTIO_DUAL_STACK"
	EnvReconcile              = "RECONCILE"
	EnvCleanupOnly            = "CLEANUP_ONLY"
	EnvForceApply             = "FORCE_APPLY"
	EnvForceIptablesBinary    = "FORCE_IPTABLES_BINARY"
	EnvNativeNftables         = "NATIVE_NFTABLES"
	EnvSkipRuleApply          = "SKIP_RULE_APPLY"
	EnvRunValidation          = "RUN_VALIDATION"
	EnvProbePort              = "IPTABLES_PROBE_PORT"
	EnvProbeTimeout           = "PROBE_TIMEOUT"
	EnvNetworkNamespace       = "NETWORK_NAMESPACE"
	EnvCNIMode                = "CNI_MODE"
	EnvOwnerGroups            = "ISTIO_OUTBOUND_OWNER_GROUPS"
	EnvOwnerGroupsExclude     = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"
	EnvIPv4LoopbackCIDR       = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"
	EnvEnvoyUser              = "ENVOY_USER"
	DefaultEnvoyUser          = "istio-proxy"
	DefaultProxyUID           = "1337"
)

// ExecOptions are istio-iptables flags that change neither the rules nor how they are applied. They are accepted so
// that istio-init argument lists work unchanged; see BindExecFlags for what each one does in meshcap.
type ExecOptions struct {
	LogOutputLevel   string // --log_output_level: accepted and ignored (meshcap logs through --log-level)
	SkipRuleApply    bool   // --skip-rule-apply: generate nothing, apply nothing, succeed
	RunValidation    bool   // --run-validation: istio-validation's redirect check (meshcap init; pkg/validation)
	ProbePort        string // --iptables-probe-port: the validation's probe port
	ProbeTimeout     string // --probe-timeout: how long the validation waits for a redirected probe
	NetworkNamespace string // --network-namespace: run everything in this netns (path)
	CNIMode          bool   // --cni-mode: accepted and ignored (lock scoping)
}

// BindFlags registers every istio-iptables flag that affects the rules or how they are applied (BindCaptureFlags plus
// BindApplyFlags), with defaults from the process environment. A flag on the command line beats the environment.
// It also applies the env-only settings (owner groups, IPv4 loopback CIDR, ENVOY_USER) to c.
func BindFlags(fs *pflag.FlagSet, c *Config) { BindFlagsEnv(fs, c, os.LookupEnv) }

// BindFlagsEnv is BindFlags with an injected environment.
func BindFlagsEnv(fs *pflag.FlagSet, c *Config, env LookupEnv) {
	BindCaptureFlags(fs, c, env)
	BindApplyFlags(fs, c, env)
}

// BindCaptureFlags registers the mode-neutral capture flags (what is captured and where it goes): -p -z -e -u -g -m
// -t -r -b -d -i -x -q -o -k -c, --redirect-dns, --capture-all-dns, --drop-invalid, --dual-stack, and applies the
// env-only settings. The current values of c are the defaults when no environment variable is set.
func BindCaptureFlags(fs *pflag.FlagSet, c *Config, env LookupEnv) {
	if env == nil {
		env = os.LookupEnv
	}
	c.ApplyEnvOnly(env)
	str := func(p *string, name, short, envName, usage string) {
		if envName != "" {
			if v, ok := env(envName); ok {
				*p = v
			}
			usage += " (env " + envName + ")"
		}
		fs.StringVarP(p, name, short, *p, usage)
	}
	str(&c.ProxyPort, "envoy-port", "p", "", "port to which all outbound TCP traffic of the pod is redirected")
	str(&c.InboundCapturePort, "inbound-capture-port", "z", EnvInboundCapturePort, "port to which all inbound TCP traffic of the pod is redirected")
	str(&c.InboundTunnelPort, "inbound-tunnel-port", "e", EnvInboundTunnelPort, "HBONE tunnel port, never captured inbound")
	str(&c.ProxyUID, "proxy-uid", "u", EnvProxyUID, "comma list of UIDs whose traffic is not redirected (empty: uid of $ENVOY_USER or 1337)")
	str(&c.ProxyGID, "proxy-gid", "g", EnvProxyGID, "comma list of GIDs whose traffic is not redirected (empty: same as the proxy UID)")
	str(&c.InboundInterceptionMode, "istio-inbound-interception-mode", "m", EnvInterceptionMode, "inbound interception mode: REDIRECT or TPROXY (only the exact string TPROXY changes anything)")
	str(&c.InboundTProxyMark, "istio-inbound-tproxy-mark", "t", EnvTProxyMark, "TPROXY mark")
	str(&c.InboundTProxyRouteTable, "istio-inbound-tproxy-route-table", "r", EnvTProxyRouteTable, "routing table for TPROXY")
	str(&c.InboundPortsInclude, "istio-inbound-ports", "b", EnvInboundPorts, "comma list of inbound ports to capture, or '*' for all (empty: no inbound capture)")
	str(&c.InboundPortsExclude, "istio-local-exclude-ports", "d", EnvLocalExcludePorts, "comma list of inbound ports excluded from capture (only with -b '*')")
	str(&c.OutboundIPRangesInclude, "istio-service-cidr", "i", EnvServiceCIDR, "comma list of outbound CIDRs to capture, or '*' for all (empty: no outbound redirect)")
	str(&c.OutboundIPRangesExclude, "istio-service-exclude-cidr", "x", EnvServiceExcludeCIDR, "comma list of outbound CIDRs never captured")
	str(&c.OutboundPortsInclude, "istio-outbound-ports", "q", EnvOutboundPorts, "comma list of outbound ports always captured")
	str(&c.OutboundPortsExclude, "istio-local-outbound-ports-exclude", "o", EnvLocalOutboundPortsExcl, "comma list of outbound ports (tcp and udp) never captured")
	str(&c.KubeVirtInterfaces, "kube-virt-interfaces", "k", EnvKubeVirtInterfaces, "comma list of virtual interfaces whose inbound traffic is treated as outbound")
	str(&c.ExcludeInterfaces, "istio-exclude-interfaces", "c", EnvExcludeInterfaces, "comma list of interfaces excluded from capture")

	boolean := func(p *bool, name, envName, extraEnv, usage string) {
		*p = envBool(env, envName, *p)
		usage += " (env " + envName
		if extraEnv != "" {
			*p = envBool(env, extraEnv, *p)
			usage += ", " + extraEnv
		}
		usage += ")"
		fs.BoolVar(p, name, *p, usage)
	}
	boolean(&c.RedirectDNS, "redirect-dns", EnvRedirectDNS, EnvRedirectDNSExtra, "redirect DNS to the agent on port 15053")
	boolean(&c.CaptureAllDNS, "capture-all-dns", EnvCaptureAllDNS, "", "capture all port-53 traffic, not only traffic to the resolv.conf servers")
	boolean(&c.DropInvalid, "drop-invalid", EnvDropInvalid, EnvDropInvalidExtra, "drop packets in conntrack state INVALID")
	boolean(&c.DualStack, "dual-stack", EnvDualStack, EnvDualStackExtra, "enable IPv6 rules when any interface address is IPv6")
}

// BindApplyFlags registers the flags of the iptables apply flow: -n/--dry-run, --reconcile, --cleanup-only,
// --force-apply, --force-iptables-binary, and --native-nftables (which switches the fallback to nftables).
func BindApplyFlags(fs *pflag.FlagSet, c *Config, env LookupEnv) {
	if env == nil {
		env = os.LookupEnv
	}
	c.DryRun = envBool(env, EnvDryRun, c.DryRun)
	fs.BoolVarP(&c.DryRun, "dry-run", "n", c.DryRun, "print the iptables-restore payloads instead of applying them (env "+EnvDryRun+")")
	c.Reconcile = envBool(env, EnvReconcile, c.Reconcile)
	fs.BoolVar(&c.Reconcile, "reconcile", c.Reconcile, "replace drifted ISTIO_* rules (env "+EnvReconcile+")")
	c.CleanupOnly = envBool(env, EnvCleanupOnly, c.CleanupOnly)
	fs.BoolVar(&c.CleanupOnly, "cleanup-only", c.CleanupOnly, "remove every ISTIO_* chain and jump, apply nothing (env "+EnvCleanupOnly+")")
	c.ForceApply = envBool(env, EnvForceApply, c.ForceApply)
	fs.BoolVar(&c.ForceApply, "force-apply", c.ForceApply, "apply even when the expected rules are already there (env "+EnvForceApply+")")
	if v, ok := env(EnvForceIptablesBinary); ok {
		c.ForceIptablesBinary = v
	}
	fs.StringVar(&c.ForceIptablesBinary, "force-iptables-binary", c.ForceIptablesBinary, "iptables variant: legacy, nft or empty for auto-detection (env "+EnvForceIptablesBinary+")")
	c.NativeNftables = envBool(env, EnvNativeNftables, c.NativeNftables)
	fs.BoolVar(&c.NativeNftables, "native-nftables", c.NativeNftables, "write istio's native nftables tables (inet istio-proxy-nat/mangle/raw, one nft -f - transaction) instead of iptables rules (env "+EnvNativeNftables+")")
}

// BindExecFlags registers the istio-iptables flags that affect neither rules nor apply, so that istio-init argument
// lists are accepted verbatim: --log_output_level (ignored), --skip-rule-apply (do nothing), --run-validation
// with --iptables-probe-port and --probe-timeout (istio-validation's check, pkg/validation), --network-namespace
// (run in that netns), --cni-mode (ignored).
func BindExecFlags(fs *pflag.FlagSet, o *ExecOptions, env LookupEnv) {
	if env == nil {
		env = os.LookupEnv
	}
	envStr := func(name, def string) string {
		if v, ok := env(name); ok {
			return v
		}
		return def
	}
	fs.StringVar(&o.LogOutputLevel, "log_output_level", o.LogOutputLevel, "istio logging option: accepted and ignored (use --log-level)")
	fs.BoolVar(&o.SkipRuleApply, "skip-rule-apply", envBool(env, EnvSkipRuleApply, o.SkipRuleApply), "generate and apply nothing (env "+EnvSkipRuleApply+")")
	fs.BoolVar(&o.RunValidation, "run-validation", envBool(env, EnvRunValidation, o.RunValidation), "check that capture redirects (meshcap init; exit 126 on failure) (env "+EnvRunValidation+")")
	fs.StringVar(&o.ProbePort, "iptables-probe-port", envStr(EnvProbePort, "15002"), "validation probe port (env "+EnvProbePort+")")
	fs.StringVar(&o.ProbeTimeout, "probe-timeout", envStr(EnvProbeTimeout, "5s"), "how long validation waits for a redirected probe (env "+EnvProbeTimeout+")")
	fs.StringVar(&o.NetworkNamespace, "network-namespace", envStr(EnvNetworkNamespace, o.NetworkNamespace), "network namespace path to configure (default: the current one)")
	fs.BoolVar(&o.CNIMode, "cni-mode", envBool(env, EnvCNIMode, o.CNIMode), "accepted and ignored")
}

// ApplyEnvOnly copies the settings that exist only as environment variables into c:
// ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE, ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR and ENVOY_USER.
// A variable that is set (even to "") replaces the current value.
func (c *Config) ApplyEnvOnly(env LookupEnv) {
	if v, ok := env(EnvOwnerGroups); ok {
		c.OwnerGroupsInclude = v
	}
	if v, ok := env(EnvOwnerGroupsExclude); ok {
		c.OwnerGroupsExclude = v
	}
	if v, ok := env(EnvIPv4LoopbackCIDR); ok {
		c.HostIPv4LoopbackCIDR = v
	}
	if v, ok := env(EnvEnvoyUser); ok && v != "" {
		c.EnvoyUser = v
	}
}

// envBool reads a boolean variable; unset or unparsable values keep def (istio's env package does the same).
func envBool(env LookupEnv, name string, def bool) bool {
	v, ok := env(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def
	}
	return b
}

// UserLookup returns the numeric uid of a user name; os/user in production.
type UserLookup func(name string) (uid string, err error)

func osUserLookup(name string) (string, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return "", err
	}
	return u.Uid, nil
}

// ResolveDefaults fills the defaults istio computes at run time: an empty -u becomes the uid of the user named
// EnvoyUser (ENVOY_USER, default istio-proxy) if it exists, else 1337; an empty -g becomes the final -u string.
func (c *Config) ResolveDefaults() { c.ResolveDefaultsWith(osUserLookup) }

// ResolveDefaultsWith is ResolveDefaults with an injected user lookup.
func (c *Config) ResolveDefaultsWith(lookup UserLookup) {
	if c.ProxyUID == "" {
		name := c.EnvoyUser
		if name == "" {
			name = DefaultEnvoyUser
		}
		c.ProxyUID = DefaultProxyUID
		if lookup != nil {
			if uid, err := lookup(name); err == nil && uid != "" {
				c.ProxyUID = uid
			}
		}
	}
	if c.ProxyGID == "" {
		c.ProxyGID = c.ProxyUID
	}
}

// ValidateForceIptablesBinary checks --force-iptables-binary.
func (c Config) ValidateForceIptablesBinary() error {
	switch c.ForceIptablesBinary {
	case "", "legacy", "nft":
		return nil
	}
	return fmt.Errorf("invalid --force-iptables-binary %q: want legacy, nft or empty", c.ForceIptablesBinary)
}

// ParseArgs parses an istio-iptables argument list as `meshcap iptables` does (BindFlagsEnv + BindExecFlags) with
// the given environment, starting from Default(). It does not resolve the -u/-g defaults (see ResolveDefaults).
func ParseArgs(args []string, env LookupEnv) (Config, ExecOptions, error) {
	c := Default()
	var ex ExecOptions
	fs := pflag.NewFlagSet("istio-iptables", pflag.ContinueOnError)
	BindFlagsEnv(fs, &c, env)
	BindExecFlags(fs, &ex, env)
	err := fs.Parse(args)
	return c, ex, err
}
