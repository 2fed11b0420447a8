package client

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// BatcherOptions tune a Batcher.
type BatcherOptions struct {
	// MaxInFlight is how many Batch calls the Batcher keeps in flight at once (0: 4).
	MaxInFlight int
	// MaxBatch is the most operations one Batch call carries (0: DefaultMaxBatch); it
	// carries a MiB of them at most, too.
	MaxBatch int
}

// Batcher coalesces concurrent calls into CacheService/Batch calls, adaptively: a call
// made while fewer than MaxInFlight Batch calls are in flight goes out at once, alone
// (a lone caller waits for nothing); calls made while MaxInFlight are in flight wait,
// and go out together as one Batch (up to MaxBatch, and a MiB) as soon as one
// returns. There is no timer. Its methods are those of Client (see Operations), answer
// what those answer (each caller its own value or its own error), and are safe for
// concurrent use.
//
// A caller's ctx bounds its wait; a Batch call carries the latest deadline of its
// callers and is cancelled once none of them waits any more. Since callers share a
// call, the metadata of their contexts is not sent: calls run in the Client's
// namespace, with its credential.
type Batcher struct {
	client      *Client
	maxInFlight int
	maxBatch    int

	mu       sync.Mutex
	inFlight int
	queue    []*batchedCall
}

// Batcher makes a Batcher on the client's connection.
func (c *Client) Batcher(opts BatcherOptions) *Batcher {
	b := &Batcher{client: c, maxInFlight: opts.MaxInFlight, maxBatch: opts.MaxBatch}
	if b.maxInFlight <= 0 {
		b.maxInFlight = 4
	}
	if b.maxBatch <= 0 {
		b.maxBatch = DefaultMaxBatch
	}
	return b
}

type batchedCall struct {
	ctx    context.Context
	op     operation
	answer chan BatchResult // buffered: a caller that left is not waited for
}

func (b *Batcher) run(ctx context.Context, op operation) (any, error) {
	if ctx.Err() != nil {
		return nil, contextError(ctx)
	}
	call := &batchedCall{ctx: ctx, op: op, answer: make(chan BatchResult, 1)}
	b.mu.Lock()
	if b.inFlight < b.maxInFlight {
		b.inFlight++
		b.mu.Unlock()
		b.flush([]*batchedCall{call})
		if next := b.next(); next != nil {
			go b.drain(next) // this caller has its answer: others' Batches go on without it
		}
		got := <-call.answer
		return got.Value, got.Err
	}
	b.queue = append(b.queue, call)
	b.mu.Unlock()
	select {
	case got := <-call.answer:
		return got.Value, got.Err
	case <-ctx.Done():
		return nil, contextError(ctx)
	}
}

// drain keeps a Batch slot busy while calls wait.
func (b *Batcher) drain(calls []*batchedCall) {
	for calls != nil {
		b.flush(calls)
		calls = b.next()
	}
}

// next takes the waiting calls for the slot of a Batch that returned, oldest first, up
// to maxBatch and maxPackBytes (the first alone, if bigger; those whose caller left are
// dropped), or frees the slot when none wait.
func (b *Batcher) next() []*batchedCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	var calls []*batchedCall
	taken, size := 0, 0
	for taken < len(b.queue) && len(calls) < b.maxBatch {
		if call := b.queue[taken]; call.ctx.Err() == nil {
			if size += proto.Size(call.op.request); len(calls) > 0 && size > maxPackBytes {
				break
			}
			calls = append(calls, call)
		}
		taken++
	}
	clear(b.queue[:taken])
	b.queue = b.queue[taken:]
	if len(calls) == 0 {
		b.inFlight--
		return nil
	}
	return calls
}

// flush sends calls as one Batch and answers each caller.
func (b *Batcher) flush(calls []*batchedCall) {
	ctx, release := callsContext(calls)
	defer release()
	operations := make([]operation, len(calls))
	for i, call := range calls {
		operations[i] = call.op
	}
	answers, err := b.client.exchange(ctx, operations)
	if err != nil && errors.Is(err, ErrPermissionDenied) {
		answers, err = b.readsAlone(ctx, operations, err)
	}
	for i, call := range calls {
		if err != nil {
			call.answer <- BatchResult{Err: err}
		} else {
			call.answer <- answers[i]
		}
	}
}

// readsAlone answers a Batch refused for writing without the write role: a credential
// that may only read gets PERMISSION_DENIED for the whole call when any operation in it
// writes, so the reads coalesced with those writes are sent again alone and only the
// writers get the refusal. A batch of one kind keeps the call's error.
func (b *Batcher) readsAlone(ctx context.Context, operations []operation, refused error) ([]BatchResult, error) {
	var reads []operation
	var at []int
	for i, op := range operations {
		if op.reads() {
			reads = append(reads, op)
			at = append(at, i)
		}
	}
	if len(reads) == 0 || len(reads) == len(operations) {
		return nil, refused
	}
	readAnswers, err := b.client.exchange(ctx, reads)
	answers := make([]BatchResult, len(operations))
	for i := range answers {
		answers[i].Err = refused
	}
	for j, i := range at {
		if err != nil {
			answers[i].Err = err
		} else {
			answers[i] = readAnswers[j]
		}
	}
	return answers, nil
}

// callsContext is the context of a Batch carrying the calls of several callers: it has
// the latest of their deadlines (none if one has none) and ends once every caller's
// ctx has ended. It keeps the first caller's values (a trace span to parent the call)
// but no caller's outgoing metadata, which would apply to all of them (a
// cachet-namespace there would move the others' operations to another namespace).
func callsContext(calls []*batchedCall) (context.Context, func()) {
	base := metadata.NewOutgoingContext(context.WithoutCancel(calls[0].ctx), metadata.MD{})
	ctx, cancel := context.WithCancel(base)
	var latest time.Time
	for _, call := range calls {
		deadline, ok := call.ctx.Deadline()
		if !ok {
			latest = time.Time{}
			break
		}
		if deadline.After(latest) {
			latest = deadline
		}
	}
	if !latest.IsZero() {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, latest)
		cancelParent := cancel
		cancel = func() { cancelDeadline(); cancelParent() }
	}
	var waiting atomic.Int64
	waiting.Store(int64(len(calls)))
	stops := make([]func() bool, len(calls))
	for i, call := range calls {
		stops[i] = context.AfterFunc(call.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// Get is Client.Get, batched.
func (b *Batcher) Get(ctx context.Context, key string) (*Value, error) {
	return typed[*Value](b.run(ctx, getOperation(key)))
}

// Set is Client.Set, batched; WithTags is refused (ErrInvalidArgument), as in Batch.
func (b *Batcher) Set(ctx context.Context, key string, value []byte, opts ...SetOption) (uint64, error) {
	return typed[uint64](b.run(ctx, setOperation(key, value, opts)))
}

// Delete is Client.Delete, batched.
func (b *Batcher) Delete(ctx context.Context, keys ...string) (int64, error) {
	return typed[int64](b.run(ctx, deleteOperation(keys)))
}

// Increment is Client.Increment, batched.
func (b *Batcher) Increment(ctx context.Context, key string, by int64, ttl time.Duration) (int64, error) {
	return typed[int64](b.run(ctx, incrementOperation(key, by, ttl)))
}

// IncrementFloat is Client.IncrementFloat, batched.
func (b *Batcher) IncrementFloat(ctx context.Context, key string, by float64, ttl time.Duration) (float64, error) {
	return typed[float64](b.run(ctx, incrementFloatOperation(key, by, ttl)))
}

// Expire is Client.Expire, batched.
func (b *Batcher) Expire(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	return typed[bool](b.run(ctx, expireOperation(key, ttl)))
}

// HashGet is Client.HashGet, batched.
func (b *Batcher) HashGet(ctx context.Context, key string, names ...string) ([][]byte, error) {
	return typed[[][]byte](b.run(ctx, hashGetOperation(key, names)))
}

// HashSet is Client.HashSet, batched.
func (b *Batcher) HashSet(ctx context.Context, key string, values []Field, ifAbsent bool, ttl CollectionTTL) (int64, error) {
	return typed[int64](b.run(ctx, hashSetOperation(key, values, ifAbsent, ttl)))
}
