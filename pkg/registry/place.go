package registry

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// ErrNoWorker is returned (wrapped, with the reason) by Place when no worker can take a new
// conversation.
var ErrNoWorker = errors.New("no worker available")

// p2cThreshold is the candidate count above which Place uses the power of two choices.
const p2cThreshold = 8

// PoolBand bounds the preference for a worker with a free warm pool sandbox: it is preferred
// over less loaded workers only while its load (as a fraction of its capacity) exceeds the
// least loaded one's by at most this much. A free pool sandbox saves a conversation one
// sandbox creation, once (a few hundred milliseconds); the balance of the load lasts the
// conversation's life, so a worker that just joined (its pool still filling) is not passed
// over for a busy one whose pool is full.
const PoolBand = 0.125

type candidate struct {
	ws   *workerState
	load int // registered load + placements made here since
}

// less reports whether a is less loaded than b (by load/capacity).
func (a candidate) less(b candidate) bool {
	return a.load*b.ws.info.Capacity < b.load*a.ws.info.Capacity
}

func (a candidate) same(b candidate) bool {
	return a.load*b.ws.info.Capacity == b.load*a.ws.info.Capacity
}

// Place picks a worker for a new conversation: among the live, non-draining workers that list
// backend (backend "" = any) and have Load < Capacity, the least loaded by Load/Capacity (ties
// broken at random); with more than 8 candidates, the less loaded of two picked at random (power
// of two choices). Load counts the placements this Registry made that the worker's registration
// may not count yet (PendingWindow), so a burst of new conversations spreads. Workers with a
// free warm pool sandbox (PoolFree, less those placements: each may have claimed one) are
// preferred, so that the conversation's first run does not wait for a sandbox's creation: the
// choice is made among those of them loaded at most PoolBand (of their capacity) more than the
// least loaded candidate, when there are any. When no worker fits it returns an error
// wrapping ErrNoWorker that says why.
func (r *Registry) Place(backend string) (protocol.WorkerInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.workers) == 0 {
		return protocol.WorkerInfo{}, fmt.Errorf("%w: no live workers", ErrNoWorker)
	}
	with := ""
	if backend != "" {
		with = fmt.Sprintf(" with backend %q", backend)
	}
	var withBackend, active int
	cands := make([]candidate, 0, len(r.workers))
	var pooled []candidate // those of cands with a pool sandbox free
	least := 1.0           // the lowest load fraction of cands
	for id, ws := range r.workers {
		if backend != "" && !slices.Contains(ws.info.Backends, backend) {
			continue
		}
		withBackend++
		if ws.info.Draining {
			continue
		}
		active++
		load := ws.info.Load + len(r.pending[id])
		if ws.info.Capacity <= 0 || load >= ws.info.Capacity {
			continue
		}
		cands = append(cands, candidate{ws: ws, load: load})
		least = min(least, fraction(load, ws.info.Capacity))
		if ws.info.PoolFree > len(r.pending[id]) {
			pooled = append(pooled, candidate{ws: ws, load: load})
		}
	}
	pooled = slices.DeleteFunc(pooled, func(c candidate) bool { return fraction(c.load, c.ws.info.Capacity) > least+PoolBand })
	switch {
	case withBackend == 0:
		return protocol.WorkerInfo{}, fmt.Errorf("%w: none of the %d live workers has backend %q", ErrNoWorker, len(r.workers), backend)
	case active == 0:
		return protocol.WorkerInfo{}, fmt.Errorf("%w: all %d live workers%s are draining", ErrNoWorker, withBackend, with)
	case len(cands) == 0:
		return protocol.WorkerInfo{}, fmt.Errorf("%w: all %d non-draining workers%s are full", ErrNoWorker, active, with)
	}
	if len(pooled) > 0 {
		cands = pooled
	}
	var best candidate
	if len(cands) > p2cThreshold {
		i := rand.IntN(len(cands))
		j := rand.IntN(len(cands) - 1)
		if j >= i {
			j++
		}
		best = cands[i]
		if cands[j].less(best) || (cands[j].same(best) && rand.IntN(2) == 0) {
			best = cands[j]
		}
	} else {
		ties := 0
		for _, c := range cands {
			switch {
			case ties == 0 || c.less(best):
				best, ties = c, 1
			case c.same(best):
				ties++
				if rand.IntN(ties) == 0 {
					best = c
				}
			}
		}
	}
	r.pending[best.ws.info.ID] = append(r.pending[best.ws.info.ID], time.Now())
	return cloneInfo(best.ws.info), nil
}

func fraction(load, capacity int) float64 { return float64(load) / float64(capacity) }
