package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/metrics"
)

// agentTableSize is the node-wide size of the agent's connection tables: room for many pods at their capacity.
// The tables grow with live entries only.
func agentTableSize(perPod uint32) uint32 { return max(perPod, 1<<17) }

// serveAgentMetrics serves /metrics with the capture counters of every enrolled pod (labels: netns cookie and the
// pod's namespace/name from its enrollment record).
func serveAgentMetrics(log *zap.Logger, addr string, r *agentReconciler) (stop func(), err error) {
	src := func() ([]metrics.Pod, error) {
		stats, err := loader.ReadCaptureStats(r.enr.PinDir)
		if err != nil {
			return nil, err
		}
		names := r.podNames()
		var pods []metrics.Pod
		for cookie, c := range stats {
			pods = append(pods, metrics.Pod{NetnsCookie: cookie, Name: names[cookie], Counters: c})
		}
		return pods, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCaptureCollector(src))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", zap.Error(err))
		}
	}()
	log.Info("serving metrics", zap.String("addr", ln.Addr().String()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// podNames maps the netns cookies of the enrollment records to namespace/name.
func (r *agentReconciler) podNames() map[uint64]string {
	out := map[uint64]string{}
	ids, err := r.store.List()
	if err != nil {
		return out
	}
	for _, id := range ids {
		if rec, err := r.store.Get(id); err == nil && rec != nil {
			out[rec.NetnsCookie] = rec.Pod.String()
		}
	}
	return out
}
