package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
)

// palette colours scenarios in report order.
var palette = []string{"#7f7f7f", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"}

type bar struct {
	layers []float64 // drawn first to last, each over the previous (tallest first)
	lo, hi float64   // whisker (NaN: none)
}

type panel struct {
	title, unit string
	groups      []string
	series      []string
	bars        [][]bar // [group][series]
	log         bool
}

// WriteSVG draws the report's plot: grouped bars of request/response and new-connection rates (whiskers: min and
// max over rounds), latency percentiles p50/p90/p99 (log scale), and stream throughput, one colour per scenario.
func WriteSVG(w io.Writer, res *Results) error {
	scen := res.Scenarios()
	var rates, lats, streams []string
	for _, m := range res.Metrics() {
		switch {
		case strings.HasPrefix(m.Name, "rr_") || strings.HasPrefix(m.Name, "connect_"):
			rates = append(rates, m.Name)
			if hasMetric(res, "p50_"+m.Name) {
				lats = append(lats, m.Name)
			}
		case strings.HasPrefix(m.Name, "stream"):
			streams = append(streams, m.Name)
		}
	}
	med := func(s, m string) bar {
		sum := res.Summary(s, m)
		if sum.N == 0 {
			return bar{lo: math.NaN(), hi: math.NaN()}
		}
		return bar{layers: []float64{sum.Median}, lo: sum.Min, hi: sum.Max}
	}
	var panels []panel
	if len(rates) > 0 {
		p := panel{title: "Request/response (rr_*) and new-connection (connect_*) rate, per second", unit: "/s",
			groups: rates, series: scen}
		for _, m := range rates {
			var row []bar
			for _, s := range scen {
				row = append(row, med(s, m))
			}
			p.bars = append(p.bars, row)
		}
		panels = append(panels, p)
	}
	if len(lats) > 0 {
		p := panel{title: "Latency percentiles (us, log scale): p99 light, p90 medium, p50 dark", unit: "us",
			groups: lats, series: scen, log: true}
		for _, m := range lats {
			var row []bar
			for _, s := range scen {
				b := bar{lo: math.NaN(), hi: math.NaN()}
				for _, q := range []string{"p99_", "p90_", "p50_"} {
					sum := res.Summary(s, q+m)
					if sum.N == 0 {
						b.layers = nil
						break
					}
					b.layers = append(b.layers, sum.Median)
				}
				row = append(row, b)
			}
			p.bars = append(p.bars, row)
		}
		panels = append(panels, p)
	}
	if len(streams) > 0 {
		p := panel{title: "Bulk stream throughput, Gbit/s", unit: "Gbit/s", groups: streams, series: scen}
		for _, m := range streams {
			var row []bar
			for _, s := range scen {
				row = append(row, med(s, m))
			}
			p.bars = append(p.bars, row)
		}
		panels = append(panels, p)
	}

	const width, panelH, legendH = 1000.0, 300.0, 40.0
	height := legendH + panelH*float64(len(panels)) + 10
	if len(panels) == 0 {
		height = legendH + 40
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%.0f" height="%.0f" fill="#ffffff"/>`+"\n", width, height)
	x := 60.0
	for i, s := range scen {
		fmt.Fprintf(&b, `<rect x="%.1f" y="14" width="12" height="12" fill="%s"/><text x="%.1f" y="24">%s</text>`+"\n",
			x, palette[i%len(palette)], x+16, esc(s))
		x += 24 + 7*float64(len(s))
	}
	if len(panels) == 0 {
		fmt.Fprintf(&b, `<text x="60" y="%.0f">no data</text>`+"\n", legendH+20)
	}
	for i, p := range panels {
		drawPanel(&b, p, 60, legendH+panelH*float64(i)+20, width-80, panelH-70)
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

func hasMetric(res *Results, name string) bool {
	for _, m := range res.Metrics() {
		if m.Name == name {
			return true
		}
	}
	return false
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// drawPanel draws p with its plot area at (x0, y0) of size w x h (title above, group labels below).
func drawPanel(b *bytes.Buffer, p panel, x0, y0, w, h float64) {
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="13" font-weight="bold">%s</text>`+"\n", x0, y0-6, esc(p.title))
	// Value range.
	lo, hi := math.Inf(1), 0.0
	for _, row := range p.bars {
		for _, br := range row {
			for _, v := range append(append([]float64(nil), br.layers...), br.hi) {
				if v > 0 && !math.IsNaN(v) && !math.IsInf(v, 0) {
					hi = math.Max(hi, v)
					lo = math.Min(lo, v)
				}
			}
		}
	}
	if hi <= 0 {
		hi, lo = 1, 1
	}
	var ticks []float64
	var ymap func(v float64) float64
	if p.log {
		d0, d1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		if d1 <= d0 {
			d1 = d0 + 1
		}
		ymap = func(v float64) float64 {
			if v <= 0 {
				return y0 + h
			}
			f := (math.Log10(v) - d0) / (d1 - d0)
			return y0 + h - h*math.Max(0, math.Min(1, f))
		}
		for d := d0; d <= d1; d++ {
			ticks = append(ticks, math.Pow(10, d))
		}
	} else {
		top, step := niceScale(hi)
		ymap = func(v float64) float64 { return y0 + h - h*math.Max(0, math.Min(1, v/top)) }
		for t := 0.0; t <= top+step/2; t += step {
			ticks = append(ticks, t)
		}
	}
	for _, t := range ticks {
		y := ymap(t)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#dddddd"/>`+"\n", x0, y, x0+w, y)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-4, y+4, esc(shortNum(t)))
	}
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000000"/>`+"\n", x0, y0+h, x0+w, y0+h)
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000000"/>`+"\n", x0, y0, x0, y0+h)

	ng, ns := len(p.groups), len(p.series)
	if ng == 0 || ns == 0 {
		return
	}
	gw := w / float64(ng)
	bw := math.Min(40, (gw*0.8)/float64(ns))
	opac := []string{"0.35", "0.65", "1"}
	for gi, g := range p.groups {
		gx := x0 + gw*float64(gi) + (gw-bw*float64(ns))/2
		for si := range p.series {
			br := p.bars[gi][si]
			bx := gx + bw*float64(si)
			col := palette[si%len(palette)]
			for li, v := range br.layers {
				if math.IsNaN(v) || v <= 0 {
					continue
				}
				op := "1"
				if len(br.layers) > 1 {
					op = opac[min(li, len(opac)-1)]
				}
				y := ymap(v)
				fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="%s"><title>%s %s: %s %s</title></rect>`+"\n",
					bx+1, y, bw-2, y0+h-y, col, op, esc(p.series[si]), esc(g), esc(fmtNum(v)), esc(p.unit))
			}
			if !math.IsNaN(br.lo) && !math.IsNaN(br.hi) && br.hi > 0 {
				cx := bx + bw/2
				fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000000"/>`+"\n", cx, ymap(br.lo), cx, ymap(br.hi))
			}
			if len(br.layers) == 1 && br.layers[0] > 0 && bw >= 14 {
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%s</text>`+"\n",
					bx+bw/2, ymap(math.Max(br.layers[0], br.hi))-3, esc(shortNum(br.layers[0])))
			}
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x0+gw*float64(gi)+gw/2, y0+h+16, esc(g))
	}
}

// niceScale returns a round axis top >= hi and a tick step (1, 2 or 5 times a power of ten, about 5 ticks).
func niceScale(hi float64) (top, step float64) {
	raw := hi / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		step = m * mag
		if step >= raw {
			break
		}
	}
	return math.Ceil(hi/step) * step, step
}

func shortNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e9:
		return trimZero(fmt.Sprintf("%.1f", v/1e9)) + "G"
	case a >= 1e6:
		return trimZero(fmt.Sprintf("%.1f", v/1e6)) + "M"
	case a >= 1e3:
		return trimZero(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case a >= 10 || a == 0:
		return fmt.Sprintf("%.0f", v)
	default:
		return trimZero(fmt.Sprintf("%.2f", v))
	}
}

func trimZero(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
