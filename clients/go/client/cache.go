package client

import (
	"context"
	"fmt"
	"iter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// Value is a cached value and the version to pass to IfVersion for compare-and-swap.
type Value struct {
	Data    []byte
	Version uint64
}

// Get reads key; it answers nil, nil when the key is absent.
func (c *Client) Get(ctx context.Context, key string) (*Value, error) {
	if c.near != nil {
		value, err := c.near.Get(ctx, key)
		return value, wrap(err)
	}
	reply, err := c.cache.Get(ctx, &cachev1.GetRequest{Key: key})
	if err != nil {
		return nil, wrap(err)
	}
	return getValue(reply), nil
}

// getValue is Get's answer: nil when the key is absent.
func getValue(reply *cachev1.GetResponse) *Value {
	if !reply.GetFound() {
		return nil
	}
	return &Value{Data: reply.GetValue(), Version: reply.GetVersion()}
}

// GetMany reads keys at once; the answer has one entry per key, in order, nil for an
// absent key.
func (c *Client) GetMany(ctx context.Context, keys ...string) ([]*Value, error) {
	if c.near != nil {
		values, err := c.near.GetMany(ctx, keys...)
		return values, wrap(err)
	}
	reply, err := c.cache.GetMany(ctx, &cachev1.GetManyRequest{Keys: keys})
	if err != nil {
		return nil, wrap(err)
	}
	values := make([]*Value, len(reply.GetEntries()))
	for i, entry := range reply.GetEntries() {
		if entry.GetFound() {
			values[i] = &Value{Data: entry.GetValue(), Version: entry.GetVersion()}
		}
	}
	return values, nil
}

// SetOption refines a Set.
type SetOption func(*cachev1.SetRequest)

// WithTTL gives the value a time to live; without it the server's default TTL applies.
func WithTTL(ttl time.Duration) SetOption {
	return func(r *cachev1.SetRequest) { r.Ttl = durationpb.New(ttl) }
}

// KeepTTL keeps the key's remaining TTL instead of setting a new one.
func KeepTTL() SetOption {
	return func(r *cachev1.SetRequest) { r.KeepTtl = true }
}

// IfAbsent writes only if the key does not exist (ErrKeyExists otherwise).
func IfAbsent() SetOption {
	return func(r *cachev1.SetRequest) { r.Condition = cachev1.SetCondition_SET_CONDITION_IF_ABSENT }
}

// IfPresent writes only if the key exists (ErrKeyNotFound otherwise).
func IfPresent() SetOption {
	return func(r *cachev1.SetRequest) { r.Condition = cachev1.SetCondition_SET_CONDITION_IF_PRESENT }
}

// IfVersion writes only if the key's current version is version (compare-and-swap;
// ErrVersionMismatch otherwise, Metadata["current_version"] says the current one).
func IfVersion(version uint64) SetOption {
	return func(r *cachev1.SetRequest) { r.IfVersion = &version }
}

// WithFencingToken rejects the write if a higher LockService fencing token already
// wrote the key (ErrFencingTokenStale).
func WithFencingToken(token uint64) SetOption {
	return func(r *cachev1.SetRequest) { r.FencingToken = &token }
}

// WithTags tags the value for InvalidateTags.
func WithTags(tags ...string) SetOption {
	return func(r *cachev1.SetRequest) { r.Tags = append(r.Tags, tags...) }
}

// WithRecomputeTime records how long computing the value took, for the early refresh
// hint of GetRequest.early_refresh_beta.
func WithRecomputeTime(took time.Duration) SetOption {
	return func(r *cachev1.SetRequest) { r.RecomputeTime = durationpb.New(took) }
}

// Set writes value under key and answers its new version.
func (c *Client) Set(ctx context.Context, key string, value []byte, opts ...SetOption) (uint64, error) {
	reply, err := c.cache.Set(ctx, setRequest(key, value, opts))
	if err != nil {
		return 0, wrap(err)
	}
	return reply.GetVersion(), nil
}

func setRequest(key string, value []byte, opts []SetOption) *cachev1.SetRequest {
	request := &cachev1.SetRequest{Key: key, Value: value}
	for _, opt := range opts {
		opt(request)
	}
	return request
}

// Item is one value of SetMany; TTL 0 takes SetMany's ttl.
type Item struct {
	Key   string
	Value []byte
	TTL   time.Duration
}

// SetMany writes items (each slot's keys atomically together) and answers their new
// versions in order. ttl applies to items without their own (0: the server's default).
func (c *Client) SetMany(ctx context.Context, ttl time.Duration, items ...Item) ([]uint64, error) {
	request := &cachev1.SetManyRequest{Ttl: optionalDuration(ttl)}
	for _, item := range items {
		request.Entries = append(request.Entries,
			&cachev1.SetManyEntry{Key: item.Key, Value: item.Value, Ttl: optionalDuration(item.TTL)})
	}
	reply, err := c.cache.SetMany(ctx, request)
	if err != nil {
		return nil, wrap(err)
	}
	return reply.GetVersions(), nil
}

// Delete removes keys of any type and answers how many existed.
func (c *Client) Delete(ctx context.Context, keys ...string) (int64, error) {
	reply, err := c.cache.Delete(ctx, &cachev1.DeleteRequest{Keys: keys})
	if err != nil {
		return 0, wrap(err)
	}
	return reply.GetDeleted(), nil
}

// Exists tells, per key in order, whether it exists.
func (c *Client) Exists(ctx context.Context, keys ...string) ([]bool, error) {
	reply, err := c.cache.Exists(ctx, &cachev1.ExistsRequest{Keys: keys})
	if err != nil {
		return nil, wrap(err)
	}
	return reply.GetExists(), nil
}

// Expire gives an existing key of any type a new TTL; false when the key is absent.
func (c *Client) Expire(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	reply, err := c.cache.Expire(ctx, expireRequest(key, ttl))
	if err != nil {
		return false, wrap(err)
	}
	return reply.GetFound(), nil
}

func expireRequest(key string, ttl time.Duration) *cachev1.ExpireRequest {
	return &cachev1.ExpireRequest{Key: key, Ttl: durationpb.New(ttl)}
}

// Persist removes a key's TTL (refused unless the server allows persistent keys);
// false when the key is absent.
func (c *Client) Persist(ctx context.Context, key string) (bool, error) {
	reply, err := c.cache.Persist(ctx, &cachev1.PersistRequest{Key: key})
	if err != nil {
		return false, wrap(err)
	}
	return reply.GetFound(), nil
}

// TTL is a key's remaining time to live: found is false for an absent key, and ttl is
// -1 for a key without one.
func (c *Client) TTL(ctx context.Context, key string) (ttl time.Duration, found bool, err error) {
	reply, err := c.cache.GetTtl(ctx, &cachev1.GetTtlRequest{Key: key})
	switch {
	case err != nil:
		return 0, false, wrap(err)
	case !reply.GetFound():
		return 0, false, nil
	case !reply.GetHasTtl():
		return -1, true, nil
	}
	return reply.GetTtl().AsDuration(), true, nil
}

// Increment adds by to the integer counter at key and answers its new value. A
// counter this call creates gets ttl, or the server's default TTL when ttl is 0.
func (c *Client) Increment(ctx context.Context, key string, by int64, ttl time.Duration) (int64, error) {
	reply, err := c.cache.Increment(ctx, intIncrementRequest(key, by, ttl))
	if err != nil {
		return 0, wrap(err)
	}
	return reply.GetIntValue(), nil
}

// IncrementFloat adds by to the float counter at key and answers its new value.
func (c *Client) IncrementFloat(ctx context.Context, key string, by float64, ttl time.Duration) (float64, error) {
	reply, err := c.cache.Increment(ctx, floatIncrementRequest(key, by, ttl))
	if err != nil {
		return 0, wrap(err)
	}
	return reply.GetFloatValue(), nil
}

// An increment request carries a fresh request_id, so a retry of it (the same
// request) applies once.
func intIncrementRequest(key string, by int64, ttl time.Duration) *cachev1.IncrementRequest {
	return &cachev1.IncrementRequest{Key: key, Delta: &cachev1.IncrementRequest_ByInt{ByInt: by}, Ttl: optionalDuration(ttl), RequestId: newRequestID()}
}

func floatIncrementRequest(key string, by float64, ttl time.Duration) *cachev1.IncrementRequest {
	return &cachev1.IncrementRequest{Key: key, Delta: &cachev1.IncrementRequest_ByFloat{ByFloat: by}, Ttl: optionalDuration(ttl), RequestId: newRequestID()}
}

// InvalidateTags deletes every key written with any of tags; answers how many.
func (c *Client) InvalidateTags(ctx context.Context, tags ...string) (int64, error) {
	reply, err := c.cache.InvalidateTags(ctx, &cachev1.InvalidateTagsRequest{Tags: tags})
	if err != nil {
		return 0, wrap(err)
	}
	return reply.GetDeleted(), nil
}

// InvalidatePattern deletes the namespace's keys matching the Redis glob pattern
// (SCAN in batches, not a snapshot); answers how many.
func (c *Client) InvalidatePattern(ctx context.Context, pattern string) (int64, error) {
	reply, err := c.cache.InvalidatePattern(ctx, &cachev1.InvalidatePatternRequest{Pattern: pattern})
	if err != nil {
		return 0, wrap(err)
	}
	return reply.GetDeleted(), nil
}

// Fill options of GetOrSet.
type GetOrSetOptions struct {
	// TTL of the stored value; 0: the server's default.
	TTL time.Duration
	// Tags for InvalidateTags.
	Tags []string
	// LeaseTTL is how long this caller may compute before another takes over; 0: 10s.
	LeaseTTL time.Duration
	// StaleTTL keeps a stale copy this long after the value goes, answered to callers
	// that wait while it is recomputed; 0: none.
	StaleTTL time.Duration
}

// GetOrSet answers key's value, computing it with compute on a miss. Through the
// GetOrLease/Fill lease protocol exactly one caller (of every process) computes a
// missing value; the others wait for it (or take the stale copy, see StaleTTL)
// until ctx ends. If the lease is lost while computing (the key was written or
// invalidated meanwhile) the computed value is answered but not stored.
func (c *Client) GetOrSet(ctx context.Context, key string, compute func(context.Context) ([]byte, error),
	opts GetOrSetOptions,
) ([]byte, error) {
	for {
		lease, err := c.cache.GetOrLease(ctx, &cachev1.GetOrLeaseRequest{
			Key: key, LeaseTtl: optionalDuration(opts.LeaseTTL), AcceptStale: opts.StaleTTL > 0,
		})
		if err != nil {
			return nil, wrap(err)
		}
		switch lease.GetOutcome() {
		case cachev1.LeaseOutcome_LEASE_OUTCOME_HIT:
			return lease.GetValue(), nil
		case cachev1.LeaseOutcome_LEASE_OUTCOME_LEASE_GRANTED:
			started := time.Now()
			value, err := compute(ctx)
			if err != nil {
				return nil, err
			}
			_, err = c.cache.Fill(ctx, &cachev1.FillRequest{
				Key: key, LeaseToken: lease.GetLeaseToken(), Value: value, Ttl: optionalDuration(opts.TTL),
				StaleTtl: optionalDuration(opts.StaleTTL), Tags: opts.Tags,
				RecomputeTime: durationpb.New(time.Since(started)),
			})
			if err != nil && Reason(err) != "LEASE_LOST" {
				return nil, wrap(err)
			}
			return value, nil
		default: // FILL_PENDING
			if lease.GetStale() {
				return lease.GetValue(), nil
			}
			wait := time.NewTimer(max(lease.GetRetryAfter().AsDuration(), time.Millisecond))
			select {
			case <-ctx.Done():
				wait.Stop()
				return nil, ctx.Err()
			case <-wait.C:
			}
		}
	}
}

func optionalDuration(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// Invalidation is one event of WatchInvalidations: Keys changed (drop them from a
// near-cache); or FlushAll: changes may have been missed, drop everything and serve
// nothing from the near-cache until an event with Synced says tracking is whole again.
type Invalidation struct {
	Keys     []string
	FlushAll bool
	Synced   bool
}

// WatchInvalidations streams the namespace's keys (those starting with one of
// prefixes; none: all) that change, for a near-cache (docs/near-cache.md). It returns
// once the stream is synced, so every change from then on is reported. The iterator
// runs until ctx ends or the stream fails (the error is yielded last); stop it to end
// the call.
func (c *Client) WatchInvalidations(ctx context.Context, prefixes ...string) (iter.Seq2[Invalidation, error], error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.cache.WatchInvalidations(ctx, &cachev1.WatchInvalidationsRequest{Prefixes: prefixes})
	var first *cachev1.WatchInvalidationsResponse
	if err == nil {
		first, err = stream.Recv()
	}
	if err != nil {
		cancel()
		return nil, wrap(err)
	}
	if !first.GetSynced() {
		cancel()
		return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("WatchInvalidations began with %v, not synced", first)}
	}
	return func(yield func(Invalidation, error) bool) {
		defer cancel()
		for {
			event, err := stream.Recv()
			if err != nil {
				yield(Invalidation{}, wrap(err))
				return
			}
			change := Invalidation{Keys: event.GetKeys().GetKeys(), FlushAll: event.GetFlushAll(), Synced: event.GetSynced()}
			if !yield(change, nil) {
				return
			}
		}
	}, nil
}
