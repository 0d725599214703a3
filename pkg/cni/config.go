// Package cni is the meshcap-cni chained plugin: at ADD it decides whether a pod belongs to the mesh and, if so,
// enrolls it (network-namespace cookie, pod IPs, capture settings); at DEL it unenrolls it.
//
// Invariants:
//   - prevResult is passed through unchanged (only converted to the configuration's cniVersion).
//   - A pod not meant for the mesh is left alone: nothing is recorded and nothing is programmed.
//   - A mesh pod goes into the agent's eBPF capture only when that covers all of it (capture.EBPFUnsupported with
//     its netns' facts); otherwise istio's own rules are applied in its netns (ModeIPTables). Never enrolled with
//     part of its traffic uncaptured.
//   - DEL is idempotent and succeeds with an empty or vanished netns (the record holds the cookie).
//   - Bad configuration fails ADD with a message naming the bad value; nothing is half-applied.
package cni

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshcap/meshcap/pkg/capture"
)

// PluginType is the "type" of the conflist entry.
const PluginType = "meshcap-cni"

// DefaultStateDir holds one JSON record per enrolled pod.
const DefaultStateDir = "/var/run/meshcap/cni"

// AnnotationsCapability is the containerd/CRI-O runtimeConfig key carrying the pod's annotations when the
// conflist entry declares `"capabilities": {"io.kubernetes.cri.pod-annotations": true}`.
const AnnotationsCapability = "io.kubernetes.cri.pod-annotations"

// Enrollment policies.
const (
	EnrollAll       = "all"       // every pod outside exclude_namespaces, unless it opts out
	EnrollAnnotated = "annotated" // only pods that opt in (meshcap.io/enroll=true, an injected istio sidecar, or MESHCAP_ENROLL=true)
)

// Annotations and CNI_ARGS keys understood by the plugin.
const (
	AnnotationEnroll        = "meshcap.io/enroll"       // "true" / "false"
	AnnotationIstioInject   = "sidecar.istio.io/inject" // "false" opts out
	AnnotationIstioStatus   = "sidecar.istio.io/status" // set by the istio injector: a sidecar is present
	AnnotationInterception  = "sidecar.istio.io/interceptionMode"
	AnnotationIncludeCIDRs  = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	AnnotationExcludeCIDRs  = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	AnnotationIncludeInPort = "traffic.sidecar.istio.io/includeInboundPorts"
	AnnotationExcludeInPort = "traffic.sidecar.istio.io/excludeInboundPorts"
	AnnotationIncludeOutPrt = "traffic.sidecar.istio.io/includeOutboundPorts"
	AnnotationExcludeOutPrt = "traffic.sidecar.istio.io/excludeOutboundPorts"
	ArgEnroll               = "MESHCAP_ENROLL"
)

// NetConf is the plugin's entry in the conflist.
type NetConf struct {
	types.PluginConf

	// StateDir holds the enrollment records. Default /var/run/meshcap/cni.
	StateDir string `json:"state_dir,omitempty"`
	// Enroll is the enrollment policy: "annotated" (default) or "all".
	Enroll string `json:"enroll,omitempty"`
	// ExcludeNamespaces are never enrolled. Nil: ["kube-system"]; [] excludes nothing.
	ExcludeNamespaces []string `json:"exclude_namespaces,omitempty"`
	// Capture are the capture settings (istio-iptables long flag names); missing keys take the istio
	// sidecar injector's defaults (-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020).
	Capture *Capture `json:"capture,omitempty"`
	// BPFFSDir is where the agent pins its maps (for the dataplane enroller). Default /sys/fs/bpf/meshcap.
	BPFFSDir string `json:"bpffs_dir,omitempty"`

	// RuntimeConfig holds the capability arguments the runtime passes; only AnnotationsCapability is read.
	RuntimeConfig map[string]json.RawMessage `json:"runtimeConfig,omitempty"`
	// Args is the optional "args" object some runtimes add; ignored.
	Args map[string]any `json:"args,omitempty"`
}

// Annotations returns the pod annotations passed through runtimeConfig (nil when the runtime passed none).
func (c *NetConf) Annotations() (map[string]string, error) {
	raw, ok := c.RuntimeConfig[AnnotationsCapability]
	if !ok {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("invalid runtimeConfig %q: %w", AnnotationsCapability, err)
	}
	return m, nil
}

// Capture holds the per-pod capture settings, keyed by istio-iptables long flag names. Pointers: nil = default.
type Capture struct {
	ProxyPort               *string `json:"envoy-port,omitempty"`
	InboundCapturePort      *string `json:"inbound-capture-port,omitempty"`
	InboundTunnelPort       *string `json:"inbound-tunnel-port,omitempty"`
	ProxyUID                *string `json:"proxy-uid,omitempty"`
	ProxyGID                *string `json:"proxy-gid,omitempty"`
	InboundInterceptionMode *string `json:"istio-inbound-interception-mode,omitempty"`
	InboundPortsInclude     *string `json:"istio-inbound-ports,omitempty"`
	InboundPortsExclude     *string `json:"istio-local-exclude-ports,omitempty"`
	OutboundIPRangesInclude *string `json:"istio-service-cidr,omitempty"`
	OutboundIPRangesExclude *string `json:"istio-service-exclude-cidr,omitempty"`
	OutboundPortsInclude    *string `json:"istio-outbound-ports,omitempty"`
	OutboundPortsExclude    *string `json:"istio-local-outbound-ports-exclude,omitempty"`
}

// InjectorDefaults is what the istio sidecar injector passes to istio-init (and meshcap's injection patch
// passes to `meshcap init`).
func InjectorDefaults() capture.Config {
	c := capture.Default()
	c.ProxyUID = "1337"
	c.ProxyGID = "1337"
	c.InboundInterceptionMode = "REDIRECT"
	c.OutboundIPRangesInclude = "*"
	c.OutboundIPRangesExclude = ""
	c.InboundPortsInclude = "*"
	c.InboundPortsExclude = "15090,15021,15020"
	return c
}

// ParseConf decodes stdin data strictly (unknown keys are errors, naming the key) and parses prevResult.
func ParseConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(conf); err != nil {
		return nil, fmt.Errorf("parse meshcap-cni config: %w", err)
	}
	if conf.StateDir == "" {
		conf.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(conf.StateDir) {
		return nil, fmt.Errorf("invalid state_dir %q: want an absolute path", conf.StateDir)
	}
	if conf.BPFFSDir == "" {
		conf.BPFFSDir = "/sys/fs/bpf/meshcap"
	}
	switch conf.Enroll {
	case "":
		conf.Enroll = EnrollAnnotated
	case EnrollAll, EnrollAnnotated:
	default:
		return nil, fmt.Errorf("invalid enroll %q: want %q or %q", conf.Enroll, EnrollAnnotated, EnrollAll)
	}
	if conf.ExcludeNamespaces == nil {
		conf.ExcludeNamespaces = []string{"kube-system"}
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, fmt.Errorf("parse prevResult: %w", err)
	}
	return conf, nil
}

// ParseArgs parses CNI_ARGS ("K=V;K2=V2"). Every key is kept; a pair without '=' is an error naming it.
func ParseArgs(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q: want KEY=VALUE", pair)
		}
		out[k] = v
	}
	return out, nil
}

// Pod identifies the pod from CNI_ARGS (empty fields when the runtime did not pass them).
type Pod struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
}

// PodFromArgs reads the kubelet's K8S_POD_* arguments.
func PodFromArgs(args map[string]string) Pod {
	return Pod{Namespace: args["K8S_POD_NAMESPACE"], Name: args["K8S_POD_NAME"], UID: args["K8S_POD_UID"]}
}

func (p Pod) String() string {
	if p.Namespace == "" && p.Name == "" {
		return "(no pod name in CNI_ARGS)"
	}
	return p.Namespace + "/" + p.Name
}

// Decision says whether a pod is enrolled, and why.
type Decision struct {
	Enroll bool
	Reason string
}

// Decide is the pure enrollment decision. Order: excluded namespace, explicit opt-out/opt-in by
// CNI_ARGS MESHCAP_ENROLL, then by annotation meshcap.io/enroll, sidecar.istio.io/inject=false,
// an injected istio sidecar (sidecar.istio.io/status), then the policy default.
func Decide(conf *NetConf, pod Pod, args, annotations map[string]string) (Decision, error) {
	if pod.Namespace != "" && slices.Contains(conf.ExcludeNamespaces, pod.Namespace) {
		return Decision{false, fmt.Sprintf("namespace %q is in exclude_namespaces", pod.Namespace)}, nil
	}
	if v, ok := args[ArgEnroll]; ok {
		b, err := parseBool(ArgEnroll+" in CNI_ARGS", v)
		if err != nil {
			return Decision{}, err
		}
		return Decision{b, fmt.Sprintf("CNI_ARGS %s=%s", ArgEnroll, v)}, nil
	}
	if v, ok := annotations[AnnotationEnroll]; ok {
		b, err := parseBool("annotation "+AnnotationEnroll, v)
		if err != nil {
			return Decision{}, err
		}
		return Decision{b, fmt.Sprintf("annotation %s=%s", AnnotationEnroll, v)}, nil
	}
	if v, ok := annotations[AnnotationIstioInject]; ok && strings.EqualFold(v, "false") {
		return Decision{false, "annotation " + AnnotationIstioInject + "=false"}, nil
	}
	if _, ok := annotations[AnnotationIstioStatus]; ok {
		return Decision{true, "annotation " + AnnotationIstioStatus + " (istio sidecar injected)"}, nil
	}
	if conf.Enroll == EnrollAll {
		return Decision{true, `enroll policy "all"`}, nil
	}
	return Decision{false, `enroll policy "annotated" and the pod does not opt in`}, nil
}

func parseBool(what, v string) (bool, error) {
	switch strings.ToLower(v) {
	case "true", "1", "yes", "enabled":
		return true, nil
	case "false", "0", "no", "disabled":
		return false, nil
	}
	return false, fmt.Errorf("invalid %s %q: want true or false", what, v)
}

// CaptureFor merges the capture settings: injector defaults, then the config's "capture", then the pod's
// istio traffic annotations, then CNI_ARGS MESHCAP_<FLAG> (istio long flag name, upper case, '-' -> '_',
// for example MESHCAP_ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE=9000). The result is validated.
func CaptureFor(conf *NetConf, args, annotations map[string]string) (capture.Config, capture.Policy, error) {
	c := InjectorDefaults()
	if conf.Capture != nil {
		for _, f := range captureFields(conf.Capture, &c) {
			if *f.src != nil {
				*f.dst = **f.src
			}
		}
	}
	annot := []struct {
		key string
		dst *string
	}{
		{AnnotationInterception, &c.InboundInterceptionMode},
		{AnnotationIncludeCIDRs, &c.OutboundIPRangesInclude},
		{AnnotationExcludeCIDRs, &c.OutboundIPRangesExclude},
		{AnnotationIncludeInPort, &c.InboundPortsInclude},
		{AnnotationIncludeOutPrt, &c.OutboundPortsInclude},
		{AnnotationExcludeOutPrt, &c.OutboundPortsExclude},
	}
	for _, a := range annot {
		if v, ok := annotations[a.key]; ok {
			*a.dst = v
		}
	}
	if v, ok := annotations[AnnotationExcludeInPort]; ok {
		// As the istio injector: the annotation adds to the excluded ports, it does not replace them.
		for _, p := range capture.SplitList(v) {
			if !slices.Contains(capture.SplitList(c.InboundPortsExclude), p) {
				c.InboundPortsExclude = strings.TrimPrefix(c.InboundPortsExclude+","+p, ",")
			}
		}
	}
	for _, f := range captureFields(&Capture{}, &c) {
		if v, ok := args[f.arg]; ok {
			*f.dst = v
		}
	}
	if m := c.InboundInterceptionMode; m != "REDIRECT" && m != "TPROXY" && m != "" {
		return c, capture.Policy{}, fmt.Errorf("invalid interception mode %q: want REDIRECT or TPROXY", m)
	}
	p, err := c.Policy()
	if err != nil {
		return c, p, fmt.Errorf("capture settings: %w", err)
	}
	return c, p, nil
}

type captureField struct {
	src **string
	dst *string
	arg string
}

func captureFields(src *Capture, dst *capture.Config) []captureField {
	return []captureField{
		{&src.ProxyPort, &dst.ProxyPort, "MESHCAP_ENVOY_PORT"},
		{&src.InboundCapturePort, &dst.InboundCapturePort, "MESHCAP_INBOUND_CAPTURE_PORT"},
		{&src.InboundTunnelPort, &dst.InboundTunnelPort, "MESHCAP_INBOUND_TUNNEL_PORT"},
		{&src.ProxyUID, &dst.ProxyUID, "MESHCAP_PROXY_UID"},
		{&src.ProxyGID, &dst.ProxyGID, "MESHCAP_PROXY_GID"},
		{&src.InboundInterceptionMode, &dst.InboundInterceptionMode, "MESHCAP_ISTIO_INBOUND_INTERCEPTION_MODE"},
		{&src.InboundPortsInclude, &dst.InboundPortsInclude, "MESHCAP_ISTIO_INBOUND_PORTS"},
		{&src.InboundPortsExclude, &dst.InboundPortsExclude, "MESHCAP_ISTIO_LOCAL_EXCLUDE_PORTS"},
		{&src.OutboundIPRangesInclude, &dst.OutboundIPRangesInclude, "MESHCAP_ISTIO_SERVICE_CIDR"},
		{&src.OutboundIPRangesExclude, &dst.OutboundIPRangesExclude, "MESHCAP_ISTIO_SERVICE_EXCLUDE_CIDR"},
		{&src.OutboundPortsInclude, &dst.OutboundPortsInclude, "MESHCAP_ISTIO_OUTBOUND_PORTS"},
		{&src.OutboundPortsExclude, &dst.OutboundPortsExclude, "MESHCAP_ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"},
	}
}
