package main

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// summary is what the tables show of a set of latencies. Every percentile of the report is
// computed here, by nearest rank over the raw latencies of every round.
type summary struct {
	n             int
	p50, p90, p99 time.Duration
}

func summarize(lat []time.Duration) summary {
	s := slices.Clone(lat)
	slices.Sort(s)
	return summary{n: len(s), p50: percentile(s, 0.50), p90: percentile(s, 0.90), p99: percentile(s, 0.99)}
}

// percentile of sorted latencies, nearest rank: the smallest value with at least p of them at
// or below it.
func percentile[T cmp.Ordered](sorted []T, p float64) T {
	if len(sorted) == 0 {
		var zero T
		return zero
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// roundMedians is the range of the rounds' own medians: how much the machine moved during the
// run.
func roundMedians(rounds [][]time.Duration) (lo, hi time.Duration) {
	for i, r := range rounds {
		m := summarize(r).p50
		if i == 0 || m < lo {
			lo = m
		}
		if m > hi {
			hi = m
		}
	}
	return lo, hi
}

func flatten(rounds [][]time.Duration) []time.Duration { return slices.Concat(rounds...) }

// ms formats a duration in milliseconds with three significant digits.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// ratio formats a/b as "12.3×", or "–" without b.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	r := a / b
	if r < 10 {
		return fmt.Sprintf("%.2f×", r)
	}
	return fmt.Sprintf("%.1f×", r)
}

// mib formats bytes in MiB.
func mib(b int64) string { return fmt.Sprintf("%.2f", float64(b)/(1<<20)) }

// median of sizes (memory per sandbox), by the same nearest rank.
func median(v []int64) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return percentile(s, 0.50)
}
