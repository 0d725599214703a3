// Package metrics turns capture counters into Prometheus metrics (github.com/prometheus/client_golang). It reads
// nothing itself: a Source (the agent's pinned maps, or the sidecar's own getsockopt) supplies the counters at each
// scrape, so the metrics are never stale and no state is kept here.
package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshcap/meshcap/pkg/capture"
)

// Pod is one pod's counters and the labels that name it.
type Pod struct {
	Cgroup      string // per-pod mode: the pod's cgroup ("" when unknown)
	NetnsCookie uint64 // agent mode: the pod's netns cookie (0 in per-pod mode)
	Name        string // namespace/name when known
	Counters    capture.Counters
}

// Source returns the counters of every pod at scrape time.
type Source func() ([]Pod, error)

var podLabels = []string{"cgroup", "netns_cookie", "pod"}

// Metric descriptions: names follow Prometheus conventions (_total counters, base units).
var (
	descCaptured = prometheus.NewDesc("meshcap_capture_connections_captured_total",
		"Outbound connects sent to the sidecar.", podLabels, nil)
	descExempt = prometheus.NewDesc("meshcap_capture_connections_exempt_total",
		"Outbound connects left alone, by the rule that exempted them (port: -o, owner: -u/-g, loopback, cidr: -x, not_included: outside -i/-q).",
		append(append([]string{}, podLabels...), "rule"), nil)
	descRefused = prometheus.NewDesc("meshcap_capture_connections_refused_total",
		"Outbound connects refused at connect (EPERM) because the pod was at --max-connections.", podLabels, nil)
	descInUse = prometheus.NewDesc("meshcap_capture_connections_in_use",
		"Captured client sockets open now (entries in use).", podLabels, nil)
	descCapacity = prometheus.NewDesc("meshcap_capture_connections_capacity",
		"The pod's --max-connections.", podLabels, nil)
	descDestInUse = prometheus.NewDesc("meshcap_capture_destinations_in_use",
		"Original-destination entries held for the sidecar now.", podLabels, nil)
	descDestLost = prometheus.NewDesc("meshcap_capture_destinations_lost_total",
		"Original destinations that could not be recorded (node-wide table full).", podLabels, nil)
)

// CaptureCollector is a prometheus.Collector of capture counters.
type CaptureCollector struct {
	src    Source
	errors prometheus.Counter
}

// NewCaptureCollector returns a collector that reads src at every scrape.
func NewCaptureCollector(src Source) *CaptureCollector {
	return &CaptureCollector{src: src, errors: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshcap_capture_scrape_errors_total", Help: "Scrapes whose capture counters could not be read."})}
}

// Describe implements prometheus.Collector.
func (c *CaptureCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCaptured, descExempt, descRefused, descInUse, descCapacity, descDestInUse, descDestLost, c.errors.Desc()} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *CaptureCollector) Collect(ch chan<- prometheus.Metric) {
	pods, err := c.src()
	if err != nil {
		c.errors.Inc()
	}
	ch <- c.errors
	for _, p := range pods {
		l := []string{p.Cgroup, strconv.FormatUint(p.NetnsCookie, 10), p.Name}
		k := p.Counters
		counter := func(d *prometheus.Desc, v uint64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append(append([]string{}, l...), extra...)...)
		}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
		}
		counter(descCaptured, k.Captured)
		for rule, v := range map[string]uint64{"port": k.ExemptPort, "owner": k.ExemptOwner, "loopback": k.ExemptLoopback,
			"cidr": k.ExemptCIDR, "not_included": k.NotIncluded} {
			counter(descExempt, v, rule)
		}
		counter(descRefused, k.RefusedFull)
		counter(descDestLost, k.TupleLost)
		gauge(descInUse, float64(k.ConnsInUse))
		gauge(descCapacity, float64(k.MaxConns))
		gauge(descDestInUse, float64(k.TuplesInUse))
	}
}
