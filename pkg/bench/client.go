package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Load-generator modes.
const (
	ModeRR      = "rr"      // persistent connections: send Size bytes, read Size bytes, repeat
	ModeConnect = "connect" // dial, one Size-byte exchange, close, repeat
	ModeStream  = "stream"  // one-way bulk send for the whole duration
)

// ClientConfig is one load-generator run.
type ClientConfig struct {
	Mode     string
	Addr     string        // server address, host:port
	Size     int           // request = response size (rr, connect); write size (stream, default 64 KiB)
	Conns    int           // parallel connections / workers
	Duration time.Duration // measured window
	Warmup   time.Duration // unmeasured time before the window
}

// Validate checks the configuration; errors name the bad value.
func (c ClientConfig) Validate() error {
	switch c.Mode {
	case ModeRR, ModeConnect, ModeStream:
	default:
		return fmt.Errorf("invalid mode %q: want rr, connect or stream", c.Mode)
	}
	if c.Addr == "" {
		return errors.New("missing server address")
	}
	if c.Mode != ModeStream && (c.Size < 1 || c.Size > MaxSize) {
		return fmt.Errorf("invalid size %d: want 1 to %d", c.Size, MaxSize)
	}
	if c.Mode == ModeStream && (c.Size < 0 || c.Size > MaxSize) {
		return fmt.Errorf("invalid size %d: want 0 (default) to %d", c.Size, MaxSize)
	}
	if c.Conns < 1 || c.Conns > 4096 {
		return fmt.Errorf("invalid conns %d: want 1 to 4096", c.Conns)
	}
	if c.Duration <= 0 {
		return fmt.Errorf("invalid duration %s: want > 0", c.Duration)
	}
	if c.Warmup < 0 {
		return fmt.Errorf("invalid warmup %s: want >= 0", c.Warmup)
	}
	return nil
}

// Latency holds latency statistics in nanoseconds.
type Latency struct {
	P50  int64 `json:"p50"`
	P90  int64 `json:"p90"`
	P99  int64 `json:"p99"`
	P999 int64 `json:"p999"`
	Mean int64 `json:"mean"`
	Min  int64 `json:"min"`
	Max  int64 `json:"max"`
}

// Result is what bench-client prints (one JSON object) at the end of a run.
type Result struct {
	Mode       string      `json:"mode"`
	Size       int         `json:"size"`
	Conns      int         `json:"conns"`
	Ops        uint64      `json:"ops"`   // completed exchanges in the window (rr, connect)
	Bytes      uint64      `json:"bytes"` // payload bytes sent in the window
	Errors     uint64      `json:"errors"`
	FirstError string      `json:"first_error,omitempty"`
	Seconds    float64     `json:"seconds"`     // measured window
	CPUUserNs  int64       `json:"cpu_user_ns"` // this process, during the window
	CPUSysNs   int64       `json:"cpu_sys_ns"`
	LatencyNs  Latency     `json:"latency_ns"`
	Hist       [][2]uint64 `json:"hist,omitempty"` // sparse Hist buckets (see Hist.Sparse)
}

// Rate is operations per second (rr, connect) or bits per second (stream).
func (r Result) Rate() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	if r.Mode == ModeStream {
		return float64(r.Bytes) * 8 / r.Seconds
	}
	return float64(r.Ops) / r.Seconds
}

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseDone
)

// Events reported through RunClient's callback: the measured window starts and ends. A runner samples CPU
// counters of other processes at these points.
const (
	EventStart = "start"
	EventEnd   = "end"
)

type worker struct {
	hist   Hist
	ops    uint64
	bytes  uint64
	errors uint64
	first  error
}

func (w *worker) fail(err error) {
	w.errors++
	if w.first == nil {
		w.first = err
	}
}

// RunClient runs the load generator. event (may be nil) is called with EventStart and EventEnd at the edges of the
// measured window. The result counts only what completed inside the window; CPU is this process's getrusage delta
// over the window.
func RunClient(ctx context.Context, cfg ClientConfig, event func(string)) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	if event == nil {
		event = func(string) {}
	}
	if cfg.Mode == ModeStream && cfg.Size == 0 {
		cfg.Size = 64 << 10
	}
	var phase atomic.Int32
	deadline := time.Now().Add(cfg.Warmup + cfg.Duration + 5*time.Second)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	workers := make([]*worker, cfg.Conns)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch cfg.Mode {
			case ModeRR:
				runRR(ctx, cfg, w, &phase, deadline)
			case ModeConnect:
				runConnect(ctx, cfg, w, &phase, deadline)
			case ModeStream:
				runStream(ctx, cfg, w, &phase, deadline)
			}
		}()
	}

	timer := time.NewTimer(cfg.Warmup)
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
	ru0 := rusageSelf()
	t0 := time.Now()
	phase.Store(phaseMeasure)
	event(EventStart)
	timer.Reset(cfg.Duration)
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
	phase.Store(phaseDone)
	t1 := time.Now()
	ru1 := rusageSelf()
	event(EventEnd)
	cancel() // unblocks dials and I/O through the context watchers below
	wg.Wait()

	res := Result{Mode: cfg.Mode, Size: cfg.Size, Conns: cfg.Conns, Seconds: t1.Sub(t0).Seconds(),
		CPUUserNs: ru1.user - ru0.user, CPUSysNs: ru1.sys - ru0.sys}
	var h Hist
	for _, w := range workers {
		h.Merge(&w.hist)
		res.Ops += w.ops
		res.Bytes += w.bytes
		res.Errors += w.errors
		if res.FirstError == "" && w.first != nil {
			res.FirstError = w.first.Error()
		}
	}
	if h.Count() > 0 {
		res.LatencyNs = Latency{P50: int64(h.Quantile(0.50)), P90: int64(h.Quantile(0.90)), P99: int64(h.Quantile(0.99)),
			P999: int64(h.Quantile(0.999)), Mean: int64(h.Mean()), Min: int64(h.Min()), Max: int64(h.Max())}
		res.Hist = h.Sparse()
	}
	if res.Ops == 0 && res.Bytes == 0 {
		if res.FirstError != "" {
			return res, fmt.Errorf("no %s exchange completed with %s: %s", cfg.Mode, cfg.Addr, res.FirstError)
		}
		return res, fmt.Errorf("no %s exchange completed with %s", cfg.Mode, cfg.Addr)
	}
	return res, nil
}

type rusage struct{ user, sys int64 }

func rusageSelf() rusage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return rusage{}
	}
	return rusage{user: ru.Utime.Nano(), sys: ru.Stime.Nano()}
}

func dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	return d
}

// closeOnDone closes c when ctx ends, unblocking any I/O; the returned stop releases the watcher.
func closeOnDone(ctx context.Context, c net.Conn) func() bool {
	return context.AfterFunc(ctx, func() { c.Close() })
}

func runRR(ctx context.Context, cfg ClientConfig, w *worker, phase *atomic.Int32, deadline time.Time) {
	d := dialer()
	buf := make([]byte, headerLen+cfg.Size)
	putHeader(buf, modeRR, cfg.Size)
	resp := make([]byte, cfg.Size)
	for phase.Load() != phaseDone && ctx.Err() == nil {
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			if ctx.Err() == nil {
				w.fail(fmt.Errorf("dial: %w", err))
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		stop := closeOnDone(ctx, c)
		_ = c.SetDeadline(deadline)
		req := buf // the first request carries the header
		for phase.Load() != phaseDone {
			t := time.Now()
			if _, err = c.Write(req); err == nil {
				_, err = io.ReadFull(c, resp)
			}
			if err != nil {
				if phase.Load() != phaseDone {
					w.fail(err)
				}
				break
			}
			if phase.Load() == phaseMeasure {
				w.hist.Record(time.Since(t))
				w.ops++
				w.bytes += uint64(cfg.Size)
			}
			req = buf[headerLen:]
		}
		stop()
		c.Close()
	}
}

func runConnect(ctx context.Context, cfg ClientConfig, w *worker, phase *atomic.Int32, deadline time.Time) {
	d := dialer()
	buf := make([]byte, headerLen+cfg.Size)
	putHeader(buf, modeRR, cfg.Size)
	resp := make([]byte, cfg.Size)
	for phase.Load() != phaseDone && ctx.Err() == nil {
		t := time.Now()
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			if ctx.Err() == nil && phase.Load() != phaseDone {
				w.fail(fmt.Errorf("dial: %w", err))
				time.Sleep(time.Millisecond)
			}
			continue
		}
		stop := closeOnDone(ctx, c)
		_ = c.SetDeadline(deadline)
		if _, err = c.Write(buf); err == nil {
			_, err = io.ReadFull(c, resp)
		}
		stop()
		c.Close()
		if err != nil {
			if phase.Load() != phaseDone {
				w.fail(err)
			}
			continue
		}
		if phase.Load() == phaseMeasure {
			w.hist.Record(time.Since(t))
			w.ops++
			w.bytes += uint64(cfg.Size)
		}
	}
}

func runStream(ctx context.Context, cfg ClientConfig, w *worker, phase *atomic.Int32, deadline time.Time) {
	d := dialer()
	buf := make([]byte, cfg.Size)
	var hdr [headerLen]byte
	putHeader(hdr[:], modeStream, 0)
	for phase.Load() != phaseDone && ctx.Err() == nil {
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			if ctx.Err() == nil {
				w.fail(fmt.Errorf("dial: %w", err))
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		stop := closeOnDone(ctx, c)
		_ = c.SetDeadline(deadline)
		_, err = c.Write(hdr[:])
		for err == nil && phase.Load() != phaseDone {
			var n int
			n, err = c.Write(buf)
			if phase.Load() == phaseMeasure {
				w.bytes += uint64(n)
			}
		}
		if err != nil && phase.Load() != phaseDone {
			w.fail(err)
		}
		stop()
		c.Close()
	}
}
