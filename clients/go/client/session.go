package client

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// Session sends operations on one CacheService/Session stream: each gets a fresh id and
// its answer, which may come out of order, goes to its caller; a hot client pays the
// per-call cost once per stream instead of once per operation. Its methods are those of
// Client (see Operations), answer what those answer, and are safe to call from many
// goroutines at once (the server runs up to 256 of one stream at a time; past that,
// sending waits).
//
// Operations are packed: those called while the stream's previous message is being
// written go out together in the next one (up to 256 per message), so the stream pays
// one message for all of them. Packing comes only from what is already waiting: an
// operation on an idle stream goes out at once, alone.
//
// An operation's ctx bounds that operation only: when it ends first, the operation
// answers DEADLINE_EXCEEDED or CANCELLED and the stream goes on. One whose ctx ended
// before its message was written is never sent (a Set or Increment that answered so did
// not apply); one already sent may still apply, as a unary call may. When the stream
// breaks (the server gone, the Session's ctx ended), every operation waiting on it fails
// with the stream's error (ErrUnavailable, ...), and the next operation opens a new
// stream. The namespace and credential are the stream's: those of the Client, or of the
// metadata of the ctx given to Session.
type Session struct {
	client *Client
	ctx    context.Context
	ids    atomic.Uint64

	mu     sync.Mutex
	stream *sessionStream // the one operations use now; replaced once it ended
	closed bool
}

// Session opens a Session stream. ctx bounds every stream of it: when ctx ends, the
// operations waiting fail and new ones fail at once; give it no deadline for a
// long-lived session, and Close it when done.
func (c *Client) Session(ctx context.Context) *Session {
	s := &Session{client: c, ctx: ctx}
	s.stream = s.open()
	return s
}

// maxSessionPack is the most operations a Session packs into one message: the most a
// server takes in one (256, whatever its max_batch), and as many as it holds of one
// stream before it stops reading.
const maxSessionPack = 256

// errSessionClosed answers the operations of a closed Session.
var errSessionClosed = &Error{Code: codes.Canceled, Message: "the session is closed"}

// Close half-closes the stream and waits, within ctx, until every operation sent on it
// is answered. Operations called after Close fail (codes.Canceled). It answers the
// stream's error if the stream broke while closing, and ctx's if ctx ended first (the
// stream is then cancelled).
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	st := s.stream
	s.mu.Unlock()
	select {
	case <-st.opened:
	case <-ctx.Done():
		go func() {
			<-st.opened
			st.abandon()
		}()
		return contextError(ctx)
	}
	select {
	case <-st.ended:
		return nil // it never opened, or broke before (its operations had the error)
	default:
	}
	st.halfCloseOnce.Do(func() { close(st.halfClose) })
	select {
	case <-st.ended:
	case <-ctx.Done():
		st.abandon()
		return contextError(ctx)
	}
	if err := st.failure(); err != errSessionClosed {
		return err
	}
	return nil
}

func (s *Session) run(ctx context.Context, op operation) (any, error) {
	if ctx.Err() != nil {
		return nil, contextError(ctx)
	}
	for attempt := 0; ; attempt++ {
		st, err := s.current(ctx)
		if err != nil {
			return nil, err
		}
		id := s.ids.Add(1)
		answer := make(chan sessionAnswer, 1)
		if !st.register(id, answer) {
			if attempt == 0 {
				continue // it ended before this operation was sent: a new stream takes it
			}
			return nil, st.failure()
		}
		result, err := st.exchange(ctx, queuedOperation{&cachev1.SessionOperation{Id: id, Operation: op.request}, ctx}, answer)
		if err != nil {
			return nil, err
		}
		return op.answer(result)
	}
}

// current is the stream to send on, opened (by this call or another) if the last one
// ended.
func (s *Session) current(ctx context.Context) (*sessionStream, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errSessionClosed
	}
	if s.stream.failure() != nil {
		s.stream = s.open()
	}
	st := s.stream
	s.mu.Unlock()
	select {
	case <-st.opened:
	case <-ctx.Done():
		return nil, contextError(ctx)
	}
	if st.stream == nil {
		return nil, st.failure()
	}
	return st, nil
}

// open starts opening a stream; operations wait for it to be opened.
func (s *Session) open() *sessionStream {
	st := &sessionStream{
		opened:     make(chan struct{}),
		operations: make(chan queuedOperation),
		halfClose:  make(chan struct{}),
		ended:      make(chan struct{}),
		pending:    map[uint64]chan sessionAnswer{},
	}
	go func() {
		ctx, cancel := context.WithCancel(s.ctx)
		stream, err := s.client.cache.Session(ctx)
		if err != nil {
			cancel()
			st.end(wrap(err))
			close(st.opened)
			return
		}
		st.stream, st.cancel = stream, cancel
		close(st.opened)
		go st.send()
		st.receive()
	}()
	return st
}

// sessionStream is one Session stream and the operations waiting for its answers.
type sessionStream struct {
	opened chan struct{} // closed once opening ended: stream is set, or err says why not
	stream cachev1.CacheService_SessionClient
	cancel context.CancelFunc
	// operations go to the goroutine that owns Send and CloseSend (grpc-go allows one
	// sender at a time); an unbuffered handoff, so a caller waiting to send can still
	// leave when its ctx ends. The callers waiting while a message is written are those
	// the next message packs.
	operations    chan queuedOperation
	halfClose     chan struct{}
	halfCloseOnce sync.Once
	ended         chan struct{} // closed once the stream ended; err says why

	mu      sync.Mutex
	pending map[uint64]chan sessionAnswer // by id; nil once ended
	err     error
}

// queuedOperation is an operation handed to the sender, with the ctx of its caller: one
// whose ctx ended before its message is packed is left out (its caller answers the ctx's
// error), so the server never runs what nobody waits for.
type queuedOperation struct {
	operation *cachev1.SessionOperation
	ctx       context.Context
}

type sessionAnswer struct {
	result *cachev1.BatchResult
	err    error
}

// send writes the operations handed over, packed. A handoff wakes this goroutine at
// once, before the callers woken with it (by one message of answers) have run, so it
// yields to them where they may be waiting: after each Send (which only queues the
// message for grpc's writer goroutine; the yield also lets that write it), and before
// packing while other operations of the stream are outstanding. A lone operation on an
// idle stream goes out at once. Without the yields nearly every message carried one
// operation (BenchmarkConcurrentGets, 32 goroutines: 1.4-1.8 gets per message with
// the yield after Send alone, 6-6.7 with both).
func (st *sessionStream) send() {
	var carried queuedOperation // taken, but past the last message's size (if its operation is set)
	for {
		first := carried
		if first.operation == nil {
			select {
			case first = <-st.operations:
			case <-st.halfClose:
				_ = st.stream.CloseSend()
				return
			case <-st.ended:
				return
			}
		}
		var request *cachev1.SessionRequest
		request, carried = st.pack(first)
		if request == nil {
			continue // every caller it took left (ctx ended) before it was written
		}
		if st.stream.Send(request) != nil {
			return // the stream ended: receive learns why from Recv
		}
		runtime.Gosched()
	}
}

// pack is the message that carries first and every operation already waiting to be
// handed over, up to maxSessionPack operations and maxPackBytes, but those whose
// caller's ctx has ended (nil when none is left): a lone one in id and operation (what
// any server reads), several in operations. An operation taken that does not fit is
// returned, to lead the next message (whose pack checks its ctx again); none is the zero
// queuedOperation.
func (st *sessionStream) pack(first queuedOperation) (request *cachev1.SessionRequest, carried queuedOperation) {
	if st.outstanding() > 1 {
		runtime.Gosched()
	}
	var packed []*cachev1.SessionOperation
	size := 0
	next := first
waiting:
	for {
		if next.ctx.Err() == nil {
			if size += proto.Size(next.operation); len(packed) > 0 && size > maxPackBytes {
				carried = next
				break
			}
			packed = append(packed, next.operation)
		}
		if len(packed) == maxSessionPack {
			break
		}
		select {
		case next = <-st.operations:
		default:
			break waiting
		}
	}
	switch len(packed) {
	case 0:
		return nil, queuedOperation{}
	case 1:
		return &cachev1.SessionRequest{Id: packed[0].GetId(), Operation: packed[0].GetOperation()}, carried
	}
	return &cachev1.SessionRequest{Operations: packed}, carried
}

// outstanding is how many operations wait for an answer (sent, or being handed over).
func (st *sessionStream) outstanding() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.pending)
}

func (st *sessionStream) receive() {
	defer st.cancel()
	for {
		response, err := st.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				// Ended with OK: after Close (what is left was never sent), or by a
				// server that stopped on its own.
				st.end(st.endedCleanly())
			} else {
				st.end(wrap(err))
			}
			return
		}
		st.deliver(response)
	}
}

// deliver gives each answer of response, packed or alone, to its operation, unless its
// caller left (ctx ended) before the answer came.
func (st *sessionStream) deliver(response *cachev1.SessionResponse) {
	answers := response.GetAnswers()
	st.mu.Lock()
	defer st.mu.Unlock()
	// An answer channel has room for the one answer it gets (from here or end, whichever
	// takes it out of pending), so these sends never wait.
	if len(answers) == 0 || response.GetResult() != nil {
		if answer, ok := st.pending[response.GetId()]; ok {
			delete(st.pending, response.GetId())
			answer <- sessionAnswer{result: response.GetResult()}
		}
	}
	for _, packed := range answers {
		if answer, ok := st.pending[packed.GetId()]; ok {
			delete(st.pending, packed.GetId())
			answer <- sessionAnswer{result: packed.GetResult()}
		}
	}
}

func (st *sessionStream) endedCleanly() error {
	select {
	case <-st.halfClose:
		return errSessionClosed
	default:
		return &Error{Code: codes.Unavailable, Message: "the server ended the Session stream"}
	}
}

// end fails every operation still waiting with err; the stream takes no more.
func (st *sessionStream) end(err error) {
	st.mu.Lock()
	st.err = err
	pending := st.pending
	st.pending = nil
	st.mu.Unlock()
	for _, answer := range pending {
		answer <- sessionAnswer{err: err}
	}
	close(st.ended)
}

// abandon cancels an opened stream; receive then fails what is waiting.
func (st *sessionStream) abandon() {
	if st.cancel != nil {
		st.cancel()
	}
}

func (st *sessionStream) register(id uint64, answer chan sessionAnswer) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.pending == nil {
		return false
	}
	st.pending[id] = answer
	return true
}

func (st *sessionStream) forget(id uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.pending, id) // a no-op on the nil map of an ended stream
}

// failure is why the stream ended, nil while it is open or opening.
func (st *sessionStream) failure() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

// exchange hands operation (registered under its id with answer) to the sender and
// waits for its answer, the stream's end, or ctx.
func (st *sessionStream) exchange(ctx context.Context, operation queuedOperation, answer chan sessionAnswer) (*cachev1.BatchResult, error) {
	select {
	case st.operations <- operation:
	case <-st.ended: // end answered it
	case <-ctx.Done():
		st.forget(operation.operation.GetId())
		return nil, contextError(ctx)
	}
	select {
	case got := <-answer:
		return got.result, got.err
	case <-ctx.Done():
		st.forget(operation.operation.GetId())
		return nil, contextError(ctx)
	}
}

// Get is Client.Get on the stream.
func (s *Session) Get(ctx context.Context, key string) (*Value, error) {
	return typed[*Value](s.run(ctx, getOperation(key)))
}

// Set is Client.Set on the stream; WithTags is refused (ErrInvalidArgument), as in Batch.
func (s *Session) Set(ctx context.Context, key string, value []byte, opts ...SetOption) (uint64, error) {
	return typed[uint64](s.run(ctx, setOperation(key, value, opts)))
}

// Delete is Client.Delete on the stream.
func (s *Session) Delete(ctx context.Context, keys ...string) (int64, error) {
	return typed[int64](s.run(ctx, deleteOperation(keys)))
}

// Increment is Client.Increment on the stream.
func (s *Session) Increment(ctx context.Context, key string, by int64, ttl time.Duration) (int64, error) {
	return typed[int64](s.run(ctx, incrementOperation(key, by, ttl)))
}

// IncrementFloat is Client.IncrementFloat on the stream.
func (s *Session) IncrementFloat(ctx context.Context, key string, by float64, ttl time.Duration) (float64, error) {
	return typed[float64](s.run(ctx, incrementFloatOperation(key, by, ttl)))
}

// Expire is Client.Expire on the stream.
func (s *Session) Expire(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	return typed[bool](s.run(ctx, expireOperation(key, ttl)))
}

// HashGet is Client.HashGet on the stream.
func (s *Session) HashGet(ctx context.Context, key string, names ...string) ([][]byte, error) {
	return typed[[][]byte](s.run(ctx, hashGetOperation(key, names)))
}

// HashSet is Client.HashSet on the stream.
func (s *Session) HashSet(ctx context.Context, key string, values []Field, ifAbsent bool, ttl CollectionTTL) (int64, error) {
	return typed[int64](s.run(ctx, hashSetOperation(key, values, ifAbsent, ttl)))
}
