package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"
)

// newAdminServer serves GET /stats (the Snapshot as JSON), GET /metrics (Prometheus: the relay's counters and its
// pod's capture counters) and /debug/pprof/ on a private mux.
func (p *Proxy) newAdminServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(p.stats.Snapshot())
	})
	mux.Handle("GET /metrics", p.metricsHandler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}
