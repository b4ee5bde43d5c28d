package protocol

import "time"

// WorkerInfo is a worker's registration in its fleet's registry bucket (Subjects.WorkersBucket) (internal, additive like the rest).
type WorkerInfo struct {
	ID string `json:"id"`
	// Backends the worker can create sandboxes on ("docker", "daytona").
	Backends []string `json:"backends"`
	// Languages the worker's default image runs.
	Languages []string `json:"languages"`
	// Capacity is the most sandboxes the worker holds at once.
	Capacity int `json:"capacity"`
	// Load is the number of sandboxes it holds (live or being created).
	Load int `json:"load"`
	// Running is the number of runs executing now.
	Running int `json:"running"`
	// Draining is true once the worker is shutting down: place nothing new on it.
	Draining bool `json:"draining"`
	// PoolFree is the number of free sandboxes in the worker's warm pool: a new conversation
	// placed on it while one is free skips the sandbox's creation (absent: none).
	PoolFree int       `json:"pool_free,omitempty"`
	Version  string    `json:"version,omitempty"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`
}
