package proxy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
)

// WriteStatsFile writes s as JSON to path atomically: a temporary file in the same directory, then rename.
func WriteStatsFile(path string, s Snapshot) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write stats file %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, 0o644)
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write stats file %s: %w", path, werr)
	}
	return nil
}

// statsWriter rewrites the stats file at most every interval, only when the counters changed.
type statsWriter struct {
	path     string
	interval time.Duration
	stats    *Stats
	log      *zap.Logger
	last     Snapshot
	failing  bool
	stopc    chan struct{}
	done     chan struct{}
}

func newStatsWriter(path string, interval time.Duration, s *Stats, log *zap.Logger) *statsWriter {
	return &statsWriter{path: path, interval: interval, stats: s, log: log,
		stopc: make(chan struct{}), done: make(chan struct{})}
}

func (w *statsWriter) write() error {
	s := w.stats.Snapshot()
	if err := WriteStatsFile(w.path, s); err != nil {
		return err
	}
	w.last = s
	return nil
}

func (w *statsWriter) run() {
	defer close(w.done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-w.stopc:
			return
		case <-t.C:
			if w.stats.Snapshot() == w.last {
				continue
			}
			if err := w.write(); err != nil {
				if !w.failing { // log once per failure streak
					w.log.Warn("stats file", zap.Error(err))
				}
				w.failing = true
			} else {
				w.failing = false
			}
		}
	}
}

// stop ends run and writes the final counters.
func (w *statsWriter) stop() error {
	close(w.stopc)
	<-w.done
	return w.write()
}
