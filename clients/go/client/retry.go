package client

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"sort"
	"time"
)

// IdempotentMethods are the RPCs that may run twice with the effect of once: reads,
// and writes that set an absolute state (Delete, Expire, invalidations, Reset, Ack).
// These and RequestIDMethods are retried: a retried Set, Acquire or Check could
// apply twice, and a retried Release after a lost answer would report LOCK_NOT_OWNED.
var IdempotentMethods = map[string][]string{
	"cachet.cache.v1.CacheService": {
		"Get", "GetMany", "Delete", "Exists", "Expire", "GetTtl", "GetBit", "BitCount",
		"HashGet", "HashGetAll", "HashDelete", "HashKeys", "HashValues", "HashLength", "HashScan",
		"ListRange", "ListLength",
		"SetRemove", "SetMembers", "SetIsMember", "SetCardinality", "SetRandomMembers",
		"SortedSetRank", "SortedSetRange", "SortedSetCount", "SortedSetScore", "SortedSetRemove",
		"SortedSetCardinality",
		"InvalidateTags", "InvalidatePattern",
	},
	"cachet.lock.v1.LockService":           {"Inspect", "InspectSemaphore"},
	"cachet.ratelimit.v1.RateLimitService": {"Reset", "ListPolicies"},
	"cachet.eventbus.v1.EventBusService":   {"Read", "Range", "Ack", "Pending", "ListPending", "Info"},
	"cachet.admin.v1.AdminService": {
		"GetServerInfo", "GetServiceStats", "GetSlowLog", "GetMemoryStats", "GetKeyMemoryUsage",
		"ScanKeys", "InspectKey", "GetBigKeys", "ListClients", "GetConfig",
	},
}

// RequestIDMethods are writes that would apply twice if retried, made safe to retry
// by the request_id the wrappers set: a fresh random id per call, which its retries
// (the same serialized request) repeat, so the server applies the call once
// (docs/cache.md, "Retries that apply once"). A raw stub's call without request_id is
// retried too, and may then apply twice.
var RequestIDMethods = map[string][]string{
	"cachet.cache.v1.CacheService":       {"Increment", "HashIncrement", "ListPush", "SortedSetIncrement"},
	"cachet.eventbus.v1.EventBusService": {"Publish", "Append"},
}

// newRequestID is a fresh id for one logical call (128 random bits, hex).
func newRequestID() string {
	var id [16]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(id[:])
}

// RetryServiceConfig is the gRPC service config Dial installs: IdempotentMethods and
// RequestIDMethods are retried on UNAVAILABLE, up to 4 attempts with exponential backoff and jitter
// (grpc-go randomizes each backoff), within the call's deadline.
var RetryServiceConfig = retryServiceConfig()

// The retry policy of RetryServiceConfig, which Batch calls follow too.
const (
	retryAttempts       = 4
	retryInitialBackoff = 50 * time.Millisecond
	retryMaxBackoff     = time.Second
	retryMultiplier     = 2
)

// mayRetry tells whether an RPC of service may be retried (IdempotentMethods,
// RequestIDMethods).
func mayRetry(service, method string) bool {
	return slices.Contains(IdempotentMethods[service], method) || slices.Contains(RequestIDMethods[service], method)
}

// retryBackoff is the wait before retry n (1, 2, ...), randomized as grpc-go
// randomizes it: uniform in [0, min(initial * multiplier^(n-1), max)).
func retryBackoff(n int) time.Duration {
	ceiling := retryInitialBackoff
	for range n - 1 {
		ceiling = min(ceiling*retryMultiplier, retryMaxBackoff)
	}
	return mathrand.N(ceiling)
}

func retryServiceConfig() string {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	var names []name
	for _, methods := range []map[string][]string{IdempotentMethods, RequestIDMethods} {
		services := make([]string, 0, len(methods))
		for service := range methods {
			services = append(services, service)
		}
		sort.Strings(services)
		for _, service := range services {
			for _, method := range methods[service] {
				names = append(names, name{service, method})
			}
		}
	}
	config := map[string]any{"methodConfig": []any{map[string]any{
		"name": names,
		"retryPolicy": map[string]any{
			"maxAttempts":          retryAttempts,
			"initialBackoff":       fmt.Sprintf("%gs", retryInitialBackoff.Seconds()),
			"maxBackoff":           fmt.Sprintf("%gs", retryMaxBackoff.Seconds()),
			"backoffMultiplier":    retryMultiplier,
			"retryableStatusCodes": []string{"UNAVAILABLE"},
		},
	}}}
	encoded, err := json.Marshal(config)
	if err != nil {
		panic(err) // a literal of strings and numbers always encodes
	}
	return string(encoded)
}
