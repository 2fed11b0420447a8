package client

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ratelimitv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/ratelimit/v1"
)

// RateLimits is RateLimitService. A denied check is a Decision with Allowed false,
// not an error.
type RateLimits struct {
	stub ratelimitv1.RateLimitServiceClient
}

// Algorithms for Limit.
const (
	TokenBucket          = ratelimitv1.Algorithm_ALGORITHM_TOKEN_BUCKET
	FixedWindow          = ratelimitv1.Algorithm_ALGORITHM_FIXED_WINDOW
	SlidingWindowLog     = ratelimitv1.Algorithm_ALGORITHM_SLIDING_WINDOW_LOG
	SlidingWindowCounter = ratelimitv1.Algorithm_ALGORITHM_SLIDING_WINDOW_COUNTER
	GCRA                 = ratelimitv1.Algorithm_ALGORITHM_GCRA
)

// Limit is Limit hits per Period (the zero Algorithm is the token bucket); Burst
// is the token bucket's capacity or GCRA's burst (0: Limit).
type Limit struct {
	Algorithm ratelimitv1.Algorithm
	Limit     uint64
	Period    time.Duration
	Burst     uint64
}

// PerMinute is a token bucket of n hits a minute; PerSecond of n a second.
func PerMinute(n uint64) Limit { return Limit{Limit: n, Period: time.Minute} }

// PerSecond is a token bucket of n hits a second.
func PerSecond(n uint64) Limit { return Limit{Limit: n, Period: time.Second} }

// Target is what a check limits: Inline, Policy or Descriptor.
type Target = *ratelimitv1.RateLimitTarget

// Inline limits key with limit.
func Inline(key string, limit Limit) Target {
	return &ratelimitv1.RateLimitTarget{Kind: &ratelimitv1.RateLimitTarget_InlineLimit{InlineLimit: &ratelimitv1.InlineLimit{
		Key: key, Limit: &ratelimitv1.Limit{Algorithm: limit.Algorithm, Limit: limit.Limit, Period: durationpb.New(limit.Period), Burst: limit.Burst},
	}}}
}

// Policy limits key with the server's named policy (ErrPolicyNotFound if none).
func Policy(name, key string) Target {
	return &ratelimitv1.RateLimitTarget{Kind: &ratelimitv1.RateLimitTarget_Policy{Policy: &ratelimitv1.PolicyRef{Name: name, Key: key}}}
}

// Descriptor matches Envoy-style descriptor entries (key, value, key, value, ...)
// against the server's rules of domain.
func Descriptor(domain string, keyValues ...string) Target {
	match := &ratelimitv1.DescriptorMatch{Domain: domain}
	for i := 0; i+1 < len(keyValues); i += 2 {
		match.Entries = append(match.Entries, &ratelimitv1.DescriptorEntry{Key: keyValues[i], Value: keyValues[i+1]})
	}
	return &ratelimitv1.RateLimitTarget{Kind: &ratelimitv1.RateLimitTarget_DescriptorMatch{DescriptorMatch: match}}
}

// Decision is the answer of a check.
type Decision struct {
	Allowed bool
	// Limit is the capacity; Remaining what is left after this decision.
	Limit, Remaining uint64
	// RetryAfter is when the same hits would be admitted (denied only; 0 when never).
	RetryAfter time.Duration
	// ResetAfter is when the allowance is full again.
	ResetAfter time.Duration
	// Result is the whole answer (shadow mode, matched policy, fail-open, ...).
	Result *ratelimitv1.CheckResult
}

func decision(result *ratelimitv1.CheckResult) *Decision {
	return &Decision{
		Allowed: result.GetAllowed(), Limit: result.GetLimit(), Remaining: result.GetRemaining(),
		RetryAfter: result.GetRetryAfter().AsDuration(), ResetAfter: result.GetResetAfter().AsDuration(), Result: result,
	}
}

// Check spends one hit on target.
func (r *RateLimits) Check(ctx context.Context, target Target) (*Decision, error) {
	return r.CheckHits(ctx, target, 1)
}

// CheckHits spends hits on target (admitted all together or not at all).
func (r *RateLimits) CheckHits(ctx context.Context, target Target, hits uint64) (*Decision, error) {
	reply, err := r.stub.Check(ctx, &ratelimitv1.CheckRequest{Target: target, Hits: &hits})
	if err != nil {
		return nil, wrap(err)
	}
	return decision(reply.GetResult()), nil
}

// Peek reports target's state without spending: Allowed tells whether one more hit
// would be admitted now.
func (r *RateLimits) Peek(ctx context.Context, target Target) (*Decision, error) {
	return r.CheckHits(ctx, target, 0)
}

// CheckMany decides every target (one hit each) in one call. allOrNothing admits
// them together or not at all (their keys must share a slot: ErrCrossSlot).
func (r *RateLimits) CheckMany(ctx context.Context, allOrNothing bool, targets ...Target) (allowed bool, decisions []*Decision, err error) {
	request := &ratelimitv1.CheckManyRequest{Mode: ratelimitv1.CheckManyMode_CHECK_MANY_MODE_INDEPENDENT}
	if allOrNothing {
		request.Mode = ratelimitv1.CheckManyMode_CHECK_MANY_MODE_ALL_OR_NOTHING
	}
	for _, target := range targets {
		request.Items = append(request.Items, &ratelimitv1.CheckItem{Target: target})
	}
	reply, err := r.stub.CheckMany(ctx, request)
	if err != nil {
		return false, nil, wrap(err)
	}
	for _, result := range reply.GetResults() {
		decisions = append(decisions, decision(result))
	}
	return reply.GetAllowed(), decisions, nil
}

// Reset clears targets' state; answers how many had any.
func (r *RateLimits) Reset(ctx context.Context, targets ...Target) (int64, error) {
	reply, err := r.stub.Reset(ctx, &ratelimitv1.ResetRequest{Targets: targets})
	return reply.GetCleared(), wrap(err)
}

// Policies lists every named policy of the server (of domain; "": all), all pages.
func (r *RateLimits) Policies(ctx context.Context, domain string) ([]*ratelimitv1.Policy, error) {
	var policies []*ratelimitv1.Policy
	token := ""
	for {
		reply, err := r.stub.ListPolicies(ctx, &ratelimitv1.ListPoliciesRequest{Domain: domain, PageToken: token})
		if err != nil {
			return nil, wrap(err)
		}
		policies = append(policies, reply.GetPolicies()...)
		if token = reply.GetNextPageToken(); token == "" {
			return policies, nil
		}
	}
}
