package client

import (
	"encoding/json"
	"sort"
)

// IdempotentMethods are the RPCs that may run twice with the effect of once: reads,
// and writes that set an absolute state (Delete, Expire, invalidations, Reset, Ack).
// Only these are retried: a retried Set, Increment, Acquire or Append could apply
// twice, and a retried Release after a lost answer would report LOCK_NOT_OWNED.
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

// RetryServiceConfig is the gRPC service config Dial installs: IdempotentMethods are
// retried on UNAVAILABLE, up to 4 attempts with exponential backoff and jitter
// (grpc-go randomizes each backoff), within the call's deadline.
var RetryServiceConfig = retryServiceConfig()

func retryServiceConfig() string {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	var names []name
	services := make([]string, 0, len(IdempotentMethods))
	for service := range IdempotentMethods {
		services = append(services, service)
	}
	sort.Strings(services)
	for _, service := range services {
		for _, method := range IdempotentMethods[service] {
			names = append(names, name{service, method})
		}
	}
	config := map[string]any{"methodConfig": []any{map[string]any{
		"name": names,
		"retryPolicy": map[string]any{
			"maxAttempts":          4,
			"initialBackoff":       "0.05s",
			"maxBackoff":           "1s",
			"backoffMultiplier":    2,
			"retryableStatusCodes": []string{"UNAVAILABLE"},
		},
	}}}
	encoded, err := json.Marshal(config)
	if err != nil {
		panic(err) // a literal of strings and numbers always encodes
	}
	return string(encoded)
}
