package proxy

import (
	"errors"
	"net/http"
	"sync/atomic"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/metrics"
)

// PodStatsSockopt reads the capture counters of the proxy's own pod with one getsockopt on a fresh socket
// (answered by the cgroup/getsockopt capture program; no bpf() needed, so it works after the proxy dropped to uid
// 1337). Its layout belongs to the BPF program: the command registers it (RegisterPodStats) from the loader.
type PodStatsSockopt struct {
	Level, Name, Size int
	Decode            func(answer []byte) (capture.Counters, bool)
}

var podStats atomic.Pointer[PodStatsSockopt]

// RegisterPodStats makes /metrics on the admin address include the pod's capture counters.
func RegisterPodStats(s PodStatsSockopt) { podStats.Store(&s) }

// readPodStats asks for the own pod's counters; none (and no error) when the pod is not captured by eBPF.
func readPodStats() ([]metrics.Pod, error) {
	s := podStats.Load()
	if s == nil {
		return nil, nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, s.Size)
	l := uint32(len(buf))
	err = getsockopt(fd, s.Level, s.Name, unsafe.Pointer(&buf[0]), &l)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return nil, nil // not captured (iptables mode, or no capture): no capture series
	}
	if err != nil {
		return nil, err
	}
	c, ok := s.Decode(buf[:l])
	if !ok {
		return nil, errors.New("short capture counters answer")
	}
	return []metrics.Pod{{Counters: c}}, nil
}

// proxyCollector exports the relay's own counters.
type proxyCollector struct{ p *Proxy }

var (
	descAccepted = prometheus.NewDesc("meshcap_proxy_connections_accepted_total", "Connections accepted by the relay.", []string{"direction"}, nil)
	descActive   = prometheus.NewDesc("meshcap_proxy_connections_active", "Connections open in the relay.", []string{"direction"}, nil)
	descRelayed  = prometheus.NewDesc("meshcap_proxy_connections_relayed_total", "Connections whose upstream was connected.", []string{"direction"}, nil)
	descBytes    = prometheus.NewDesc("meshcap_proxy_bytes_total", "Bytes relayed, by direction of the listener and of the data.", []string{"direction", "flow"}, nil)
	descErrors   = prometheus.NewDesc("meshcap_proxy_errors_total", "Relay failures by kind.", []string{"kind"}, nil)
)

func (c proxyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccepted, descActive, descRelayed, descBytes, descErrors} {
		ch <- d
	}
}

func (c proxyCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.p.stats.Snapshot()
	for dir, l := range map[string]ListenerSnapshot{"outbound": s.Outbound, "inbound": s.Inbound} {
		ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(l.Accepted), dir)
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(l.Active), dir)
		ch <- prometheus.MustNewConstMetric(descRelayed, prometheus.CounterValue, float64(l.Relayed), dir)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(l.BytesUp), dir, "up")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(l.BytesDown), dir, "down")
	}
	e := s.Errors
	for kind, v := range map[string]uint64{"origdst": e.OrigDst, "dial": e.Dial, "loop": e.Loop, "relay": e.Relay, "accept": e.Accept} {
		ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(v), kind)
	}
}

// metricsHandler serves the relay's counters and its pod's capture counters in the Prometheus text format.
func (p *Proxy) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(proxyCollector{p}, metrics.NewCaptureCollector(readPodStats))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
