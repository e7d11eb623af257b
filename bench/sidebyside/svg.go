package main

import (
	"fmt"
	"html"
	"strings"
)

// Chart geometry, in pixels.
const (
	chartWidth = 900
	labelWidth = 300
	barHeight  = 22
	barGap     = 8
	topMargin  = 64
	barsWidth  = chartWidth - labelWidth - 110
)

// barColors tell Node's primary, sidecar with the Node app and sidecar
// with Go workers apart.
var barColors = map[string]string{
	"node-rr": "#9e9e9e", "node-none": "#bdbdbd",
	"sidecar-rr": "#1565c0", "sidecar-shared": "#64b5f6",
	"sidecar-rr-go": "#2e7d32", "sidecar-shared-go": "#81c784",
}

// chart is a horizontal bar chart of new connections per second in close
// mode, one bar per setup and worker count, as plain SVG.
func chart(machine string, rs []result) string {
	var bars []*result
	peak := 0.0
	for i := range rs {
		if rs[i].mode == closeMode {
			bars = append(bars, &rs[i])
			peak = max(peak, rs[i].conns)
		}
	}
	sub := wrapWords(machine, 140)
	top := topMargin + 14*(len(sub)-1)
	height := top + len(bars)*(barHeight+barGap) + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="13">`+"\n",
		chartWidth, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="24" font-size="16" font-weight="bold">New connections per second (Connection: close), higher is better</text>`+"\n")
	for i, line := range sub {
		fmt.Fprintf(&b, `<text x="10" y="%d" font-size="11" fill="#555">%s</text>`+"\n", 44+14*i, html.EscapeString(line))
	}
	for i, r := range bars {
		writeBar(&b, r, top+i*(barHeight+barGap), peak)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func writeBar(b *strings.Builder, r *result, y int, peak float64) {
	w := 0
	if peak > 0 {
		w = int(float64(barsWidth) * r.conns / peak)
	}
	color := barColors[r.setup.name]
	if color == "" {
		color = "#777"
	}
	label := fmt.Sprintf("%s, %d workers", r.setup.label, r.workers)
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n",
		labelWidth-8, y+barHeight-6, html.EscapeString(label))
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n",
		labelWidth, y, w, barHeight, color)
	fmt.Fprintf(b, `<text x="%d" y="%d">%s/s</text>`+"\n",
		labelWidth+w+6, y+barHeight-6, fmtCount(r.conns))
}

// wrapWords breaks s into lines of at most n characters at spaces.
func wrapWords(s string, n int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len([]rune(line))+1+len([]rune(w)) > n {
			lines, line = append(lines, line), ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}
