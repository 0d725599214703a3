package bench

import (
	"math"
	"math/bits"
	"sort"
	"time"
)

// Hist is a log-linear latency histogram (HDR-like) over nanoseconds: exact below 128 ns, then 64 buckets per
// power of two, so any recorded value is reported within 1/64 (1.6%) of its true value. Memory is fixed (~30 KiB)
// whatever the number of samples. The zero value is ready to use. Not safe for concurrent use: keep one per worker
// and Merge.
type Hist struct {
	counts [histBuckets]uint64
	n      uint64
	sum    float64
	min    uint64
	max    uint64
}

const (
	histSubBits = 6
	histSub     = 1 << histSubBits // buckets per power of two
	histBuckets = (64 - histSubBits + 1) * histSub
)

// histIndex maps a value to its bucket.
func histIndex(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(v) - (histSubBits + 1)
	return (shift+1)*histSub + int(v>>uint(shift)) - histSub
}

// histBounds returns the smallest and largest value that fall into bucket i.
func histBounds(i int) (lo, hi uint64) {
	if i < 2*histSub {
		return uint64(i), uint64(i)
	}
	shift := uint(i/histSub - 1)
	mant := uint64(i%histSub + histSub)
	return mant << shift, (mant+1)<<shift - 1
}

// Record adds one sample.
func (h *Hist) Record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[histIndex(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds every sample of o.
func (h *Hist) Merge(o *Hist) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of samples.
func (h *Hist) Count() uint64 { return h.n }

// Mean is the exact mean of the samples (0 when empty).
func (h *Hist) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Min and Max are exact.
func (h *Hist) Min() time.Duration { return time.Duration(h.min) }
func (h *Hist) Max() time.Duration { return time.Duration(h.max) }

// Quantile returns the value at quantile q (0..1): the midpoint of the bucket that holds the ceil(q*n)-th smallest
// sample, clamped to the exact min and max. 0 when empty.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	if q <= 0 {
		return time.Duration(h.min)
	}
	if q >= 1 {
		return time.Duration(h.max)
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := histBounds(i)
			v := lo + (hi-lo)/2
			v = max(v, h.min)
			v = min(v, h.max)
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}

// Sparse returns the non-empty buckets as [index, count] pairs in index order (the wire form).
func (h *Hist) Sparse() [][2]uint64 {
	var out [][2]uint64
	for i, c := range h.counts {
		if c != 0 {
			out = append(out, [2]uint64{uint64(i), c})
		}
	}
	return out
}

// HistFromSparse rebuilds a histogram from its wire form. Min and max become bucket bounds, the mean a bucket
// midpoint estimate; out-of-range indexes are ignored.
func HistFromSparse(pairs [][2]uint64) *Hist {
	h := &Hist{}
	sort.Slice(pairs, func(a, b int) bool { return pairs[a][0] < pairs[b][0] })
	for _, p := range pairs {
		if p[0] >= histBuckets || p[1] == 0 {
			continue
		}
		i := int(p[0])
		lo, hi := histBounds(i)
		if h.n == 0 {
			h.min = lo
		}
		h.max = hi
		h.counts[i] += p[1]
		h.n += p[1]
		h.sum += float64(p[1]) * float64(lo+(hi-lo)/2)
	}
	return h
}
