package client

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// DefaultMaxBatch is the server's default max_batch (CACHET_LIMITS__MAX_BATCH): the most
// operations one Batch RPC carries. A Batch with more is sent as several, and a Batcher
// never puts more in one.
const DefaultMaxBatch = 1000

// maxPackBytes bounds the operations one message packs, by size, a Session message or a
// Batch call (a bigger lone one goes alone, for the server to take or refuse): the server
// refuses a message over its message size (8 MiB by default) whatever it carries, and
// past a MiB packing saves nothing worth having.
const maxPackBytes = 1 << 20

// Operations are the cache calls that can travel in a CacheService/Batch or Session:
// *Client makes each one RPC, *Session sends them on one stream, *Batcher coalesces
// concurrent ones into Batch RPCs. Each answers what the Client method answers, errors
// included (the same *Error codes, reasons and metadata).
type Operations interface {
	Get(ctx context.Context, key string) (*Value, error)
	Set(ctx context.Context, key string, value []byte, opts ...SetOption) (uint64, error)
	Delete(ctx context.Context, keys ...string) (int64, error)
	Increment(ctx context.Context, key string, by int64, ttl time.Duration) (int64, error)
	IncrementFloat(ctx context.Context, key string, by float64, ttl time.Duration) (float64, error)
	Expire(ctx context.Context, key string, ttl time.Duration) (bool, error)
	HashGet(ctx context.Context, key string, names ...string) ([][]byte, error)
	HashSet(ctx context.Context, key string, values []Field, ifAbsent bool, ttl CollectionTTL) (int64, error)
}

var (
	_ Operations = (*Client)(nil)
	_ Operations = (*Session)(nil)
	_ Operations = (*Batcher)(nil)
)

// operation is one BatchOperation and how its BatchResult becomes the answer of the
// Client method of the same name; the unary wrappers build the same requests.
type operation struct {
	method  string // the unary RPC, whose retry policy the operation has
	request *cachev1.BatchOperation
	// decode reads a successful result; false when the result is not of the
	// operation's kind.
	decode func(*cachev1.BatchResult) (any, bool)
}

// answer is the Client method's answer for result: its value, or the error that the
// operation's status maps to.
func (o operation) answer(result *cachev1.BatchResult) (any, error) {
	if err := operationError(result.GetStatus()); err != nil {
		return nil, err
	}
	value, ok := o.decode(result)
	if !ok {
		return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("the server answered %T to %T", result.GetResult(), o.request.GetOperation())}
	}
	return value, nil
}

// reads tells a read (get, hash_get), which a credential with only the read role may
// batch, from a write.
func (o operation) reads() bool {
	return o.request.GetGet() != nil || o.request.GetHashGet() != nil
}

func getOperation(key string) operation {
	return operation{
		"Get",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_Get{Get: &cachev1.GetRequest{Key: key}}},
		func(r *cachev1.BatchResult) (any, bool) {
			if value := getValue(r.GetGet()); value != nil {
				return value, true
			}
			return nil, r.GetGet() != nil // an absent key is a nil Value, not a typed nil
		},
	}
}

func setOperation(key string, value []byte, opts []SetOption) operation {
	return operation{
		"Set",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_Set{Set: setRequest(key, value, opts)}},
		func(r *cachev1.BatchResult) (any, bool) { return r.GetSet().GetVersion(), r.GetSet() != nil },
	}
}

func deleteOperation(keys []string) operation {
	return operation{
		"Delete",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_Delete{Delete: &cachev1.DeleteRequest{Keys: keys}}},
		func(r *cachev1.BatchResult) (any, bool) { return r.GetDelete().GetDeleted(), r.GetDelete() != nil },
	}
}

func incrementOperation(key string, by int64, ttl time.Duration) operation {
	return operation{
		"Increment",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_Increment{Increment: intIncrementRequest(key, by, ttl)}},
		func(r *cachev1.BatchResult) (any, bool) {
			return r.GetIncrement().GetIntValue(), r.GetIncrement() != nil
		},
	}
}

func incrementFloatOperation(key string, by float64, ttl time.Duration) operation {
	return operation{
		"Increment",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_Increment{Increment: floatIncrementRequest(key, by, ttl)}},
		func(r *cachev1.BatchResult) (any, bool) {
			return r.GetIncrement().GetFloatValue(), r.GetIncrement() != nil
		},
	}
}

func expireOperation(key string, ttl time.Duration) operation {
	return operation{
		"Expire",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_Expire{Expire: expireRequest(key, ttl)}},
		func(r *cachev1.BatchResult) (any, bool) { return r.GetExpire().GetFound(), r.GetExpire() != nil },
	}
}

func hashGetOperation(key string, names []string) operation {
	return operation{
		"HashGet",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_HashGet{HashGet: &cachev1.HashGetRequest{Key: key, Fields: names}}},
		func(r *cachev1.BatchResult) (any, bool) { return hashValues(r.GetHashGet()), r.GetHashGet() != nil },
	}
}

func hashSetOperation(key string, values []Field, ifAbsent bool, ttl CollectionTTL) operation {
	return operation{
		"HashSet",
		&cachev1.BatchOperation{Operation: &cachev1.BatchOperation_HashSet{HashSet: hashSetRequest(key, values, ifAbsent, ttl)}},
		func(r *cachev1.BatchResult) (any, bool) { return r.GetHashSet().GetAdded(), r.GetHashSet() != nil },
	}
}

// errorDomain is the google.rpc.ErrorInfo domain of every cachet error.
const errorDomain = "cachet.dev"

// operationError is the *Error of a failed operation, nil for a successful one: the
// same as the unary RPC's error (code, message, and an ErrorInfo with reason and
// metadata), so Reason, ErrorInfo, errors.Is and status.Code read it alike. An
// OperationStatus carries no google.rpc.BadRequest, so FieldViolations stays empty (the
// message names the field).
func operationError(s *cachev1.OperationStatus) error {
	if s.GetCode() == int32(codes.OK) {
		return nil
	}
	st := status.New(codes.Code(s.GetCode()), s.GetMessage())
	if s.GetReason() != "" {
		if detailed, err := st.WithDetails(&errdetails.ErrorInfo{
			Reason: s.GetReason(), Domain: errorDomain, Metadata: s.GetMetadata(),
		}); err == nil {
			st = detailed
		}
	}
	return AsError(st.Err())
}

// contextError is what a call answers when ctx ends before its answer, as grpc-go
// answers a unary call (DEADLINE_EXCEEDED or CANCELLED).
func contextError(ctx context.Context) error {
	return AsError(status.FromContextError(ctx.Err()).Err())
}

// typed is an answer of operation.answer as the Client method's types.
func typed[T any](value any, err error) (T, error) {
	answer, _ := value.(T)
	return answer, err
}

// Batch collects operations to send as one CacheService/Batch call (several calls,
// sent at once, past max_batch operations or a MiB of them). It is a pipeline, not a
// transaction: each operation applies on its own and answers on its own, in order;
// Txn is the atomic one. Build it in one goroutine, then Exec it.
//
//	b := c.Batch()
//	user, visits := b.Get("user:1"), b.Increment("visits", 1, 0)
//	if _, err := b.Exec(ctx); err != nil { ... } // the call failed (UNAVAILABLE, deadline)
//	value, err := user.Result()                   // what c.Get answers: nil, nil if absent
//	n, err := visits.Result()                     // each operation's own error
type Batch struct {
	client     *Client
	maxBatch   int
	operations []operation
	results    []BatchResult
}

// Batch starts an empty batch.
func (c *Client) Batch() *Batch { return &Batch{client: c, maxBatch: DefaultMaxBatch} }

// MaxBatch sets how many operations one Batch RPC carries (DefaultMaxBatch unless the
// server's CACHET_LIMITS__MAX_BATCH is lower).
func (b *Batch) MaxBatch(n int) *Batch {
	b.maxBatch = max(n, 1)
	return b
}

// Len is the number of operations added.
func (b *Batch) Len() int { return len(b.operations) }

// BatchResult is the answer to one operation of a Batch: Value is what the Client
// method of the same name answers (*Value, nil for an absent key; uint64; int64;
// float64; bool; [][]byte), or Err its error (an *Error).
type BatchResult struct {
	Value any
	Err   error
}

// BatchOp is one operation added to a Batch; after Exec, Result is its answer.
type BatchOp[T any] struct {
	batch *Batch
	index int
}

// Result answers what the Client method of the same name answers for this operation.
// Before Exec it answers an error.
func (o BatchOp[T]) Result() (T, error) {
	if o.index >= len(o.batch.results) {
		var zero T
		return zero, &Error{Code: codes.FailedPrecondition, Message: "the batch has not been executed"}
	}
	result := o.batch.results[o.index]
	return typed[T](result.Value, result.Err)
}

func add[T any](b *Batch, op operation) BatchOp[T] {
	b.operations = append(b.operations, op)
	return BatchOp[T]{batch: b, index: len(b.operations) - 1}
}

// Get adds a Get.
func (b *Batch) Get(key string) BatchOp[*Value] { return add[*Value](b, getOperation(key)) }

// Set adds a Set. WithTags is refused (ErrInvalidArgument in its result): tag indexes
// cannot be written in a pipeline; use Client.Set.
func (b *Batch) Set(key string, value []byte, opts ...SetOption) BatchOp[uint64] {
	return add[uint64](b, setOperation(key, value, opts))
}

// Delete adds a Delete.
func (b *Batch) Delete(keys ...string) BatchOp[int64] { return add[int64](b, deleteOperation(keys)) }

// Increment adds an Increment (with a fresh request_id, as Client.Increment).
func (b *Batch) Increment(key string, by int64, ttl time.Duration) BatchOp[int64] {
	return add[int64](b, incrementOperation(key, by, ttl))
}

// IncrementFloat adds an IncrementFloat.
func (b *Batch) IncrementFloat(key string, by float64, ttl time.Duration) BatchOp[float64] {
	return add[float64](b, incrementFloatOperation(key, by, ttl))
}

// Expire adds an Expire.
func (b *Batch) Expire(key string, ttl time.Duration) BatchOp[bool] {
	return add[bool](b, expireOperation(key, ttl))
}

// HashGet adds a HashGet.
func (b *Batch) HashGet(key string, names ...string) BatchOp[[][]byte] {
	return add[[][]byte](b, hashGetOperation(key, names))
}

// HashSet adds a HashSet.
func (b *Batch) HashSet(key string, values []Field, ifAbsent bool, ttl CollectionTTL) BatchOp[int64] {
	return add[int64](b, hashSetOperation(key, values, ifAbsent, ttl))
}

// Exec sends the operations, as one Batch RPC per max_batch of them or a MiB (one
// bigger goes alone), all at once, and answers one result per operation in the order
// they were added. A failed operation fails alone, in its own result. The error is a
// call's own failure (UNAVAILABLE, a deadline, PERMISSION_DENIED for a write without
// the write role), as the unary call answers it; the results are still complete then,
// the operations of a failed call holding its error (those of the other calls may have
// applied). A call is retried on UNAVAILABLE as the unary RPCs are when each of its
// operations may be (not with a Set or a HashSet); Increments carry request ids, so a
// retry applies them once. Exec again sends the same operations again, request ids
// included (a retry, not a second batch).
func (b *Batch) Exec(ctx context.Context) ([]BatchResult, error) {
	var spans [][2]int // each call's operations, from start to end; an empty Batch is one call
	for start := 0; start < len(b.operations) || len(spans) == 0; {
		end := chunkEnd(b.operations, start, b.maxBatch)
		spans = append(spans, [2]int{start, end})
		start = end
	}
	results := make([]BatchResult, len(b.operations))
	errs := make([]error, len(spans))
	var wg sync.WaitGroup
	for chunk, span := range spans {
		start, operations := span[0], b.operations[span[0]:span[1]]
		wg.Go(func() {
			answers, err := b.client.exchange(ctx, operations)
			for i := range operations {
				if err != nil {
					results[start+i] = BatchResult{Err: err}
				} else {
					results[start+i] = answers[i]
				}
			}
			errs[chunk] = err
		})
	}
	wg.Wait()
	b.results = results
	for _, err := range errs {
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// chunkEnd is where the Batch call that carries operations from start ends: at most
// maxBatch operations and maxPackBytes of them (one bigger goes alone), so a batch of big
// values is not one request over the server's message size that fails as a whole.
func chunkEnd(operations []operation, start, maxBatch int) int {
	end, size := start, 0
	for end < len(operations) && end-start < maxBatch {
		if size += proto.Size(operations[end].request); end > start && size > maxPackBytes {
			break
		}
		end++
	}
	return end
}

// exchange sends operations as one Batch RPC and answers each one's result; the error
// is the call's own. A Batch whose every operation may run twice (its unary RPC is in
// IdempotentMethods or RequestIDMethods) is retried on UNAVAILABLE as those RPCs are,
// within ctx; one with a Set or a HashSet is not.
func (c *Client) exchange(ctx context.Context, operations []operation) ([]BatchResult, error) {
	request := &cachev1.BatchRequest{Operations: make([]*cachev1.BatchOperation, len(operations))}
	retries := true
	for i, op := range operations {
		request.Operations[i] = op.request
		retries = retries && mayRetry(cachev1.CacheService_ServiceDesc.ServiceName, op.method)
	}
	reply, err := c.cache.Batch(ctx, request)
	for attempt := 1; err != nil && retries && attempt < retryAttempts && status.Code(err) == codes.Unavailable; attempt++ {
		wait := time.NewTimer(retryBackoff(attempt))
		select {
		case <-ctx.Done():
			wait.Stop()
			return nil, wrap(err)
		case <-wait.C:
		}
		reply, err = c.cache.Batch(ctx, request)
	}
	if err != nil {
		return nil, wrap(err)
	}
	if len(reply.GetResults()) != len(operations) {
		return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf(
			"Batch answered %d results to %d operations", len(reply.GetResults()), len(operations))}
	}
	answers := make([]BatchResult, len(operations))
	for i, op := range operations {
		answers[i].Value, answers[i].Err = op.answer(reply.GetResults()[i])
	}
	return answers, nil
}
