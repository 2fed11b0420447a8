package client

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	lockv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/lock/v1"
)

// Locks is LockService. A lock alone never protects a resource: pass the fencing
// token to every write made under it (WithFencingToken for cachet's own writes).
type Locks struct {
	stub lockv1.LockServiceClient
}

// LockOptions refine Acquire, AcquireSemaphore and Hold.
type LockOptions struct {
	// Wait is how long to wait for a held lock (or a full semaphore); 0: try once.
	Wait time.Duration
	// Holder describes the holder for Inspect ("host-3/pid-4411").
	Holder string
	// MinReplicas > 0 waits until that many replicas acknowledged the grant.
	MinReplicas int64
	// RenewInterval is how often Hold renews (0: the server's default).
	RenewInterval time.Duration
}

func (o LockOptions) replication() *lockv1.ReplicationRequirement {
	if o.MinReplicas == 0 {
		return nil
	}
	return &lockv1.ReplicationRequirement{MinReplicas: o.MinReplicas}
}

// Lease is a granted lock or semaphore permit.
type Lease struct {
	Name string
	// OwnerToken proves ownership to Release and Extend; keep it secret.
	OwnerToken string
	// FencingToken is larger than every earlier grant's for the name.
	FencingToken uint64
	// ExpireTime is the Redis time the grant expires unless extended.
	ExpireTime time.Time
}

// Acquire grants lock name for ttl, waiting up to opts.Wait while it is held
// (ErrLockHeld when the wait ends first).
func (l *Locks) Acquire(ctx context.Context, name string, ttl time.Duration, opts LockOptions) (*Lease, error) {
	reply, err := l.stub.Acquire(ctx, &lockv1.AcquireRequest{
		Name: name, Ttl: durationpb.New(ttl), Wait: optionalDuration(opts.Wait), Holder: opts.Holder,
		Replication: opts.replication(),
	})
	if err != nil {
		return nil, wrap(err)
	}
	return &Lease{Name: name, OwnerToken: reply.GetOwnerToken(), FencingToken: reply.GetFencingToken(),
		ExpireTime: reply.GetExpireTime().AsTime()}, nil
}

// Release frees the lock if lease still owns it (ErrLockNotOwned otherwise).
func (l *Locks) Release(ctx context.Context, lease *Lease) error {
	_, err := l.stub.Release(ctx, &lockv1.ReleaseRequest{Name: lease.Name, OwnerToken: lease.OwnerToken})
	return wrap(err)
}

// Extend sets the lock's remaining TTL to ttl if lease still owns it (ErrLockNotOwned
// otherwise, also once it expired) and updates lease.ExpireTime.
func (l *Locks) Extend(ctx context.Context, lease *Lease, ttl time.Duration) error {
	reply, err := l.stub.Extend(ctx, &lockv1.ExtendRequest{Name: lease.Name, OwnerToken: lease.OwnerToken, Ttl: durationpb.New(ttl)})
	if err != nil {
		return wrap(err)
	}
	lease.ExpireTime = reply.GetExpireTime().AsTime()
	return nil
}

// Inspect reports a lock's state (never its owner token).
func (l *Locks) Inspect(ctx context.Context, name string) (*lockv1.InspectResponse, error) {
	reply, err := l.stub.Inspect(ctx, &lockv1.InspectRequest{Name: name})
	return reply, wrap(err)
}

// AcquireSemaphore takes one of limit permits of semaphore name for ttl, waiting up
// to opts.Wait while all are taken (ErrSemaphoreFull when the wait ends first).
func (l *Locks) AcquireSemaphore(ctx context.Context, name string, limit int64, ttl time.Duration, opts LockOptions) (*Lease, error) {
	reply, err := l.stub.AcquireSemaphore(ctx, &lockv1.AcquireSemaphoreRequest{
		Name: name, Limit: limit, Ttl: durationpb.New(ttl), Wait: optionalDuration(opts.Wait), Holder: opts.Holder,
		Replication: opts.replication(),
	})
	if err != nil {
		return nil, wrap(err)
	}
	return &Lease{Name: name, OwnerToken: reply.GetOwnerToken(), FencingToken: reply.GetFencingToken(),
		ExpireTime: reply.GetExpireTime().AsTime()}, nil
}

// ReleaseSemaphore returns the permit (ErrLockNotOwned when lease holds none).
func (l *Locks) ReleaseSemaphore(ctx context.Context, lease *Lease) error {
	_, err := l.stub.ReleaseSemaphore(ctx, &lockv1.ReleaseSemaphoreRequest{Name: lease.Name, OwnerToken: lease.OwnerToken})
	return wrap(err)
}

// ExtendSemaphore sets the permit's remaining TTL to ttl and updates lease.ExpireTime.
func (l *Locks) ExtendSemaphore(ctx context.Context, lease *Lease, ttl time.Duration) error {
	reply, err := l.stub.ExtendSemaphore(ctx, &lockv1.ExtendSemaphoreRequest{Name: lease.Name, OwnerToken: lease.OwnerToken, Ttl: durationpb.New(ttl)})
	if err != nil {
		return wrap(err)
	}
	lease.ExpireTime = reply.GetExpireTime().AsTime()
	return nil
}

// InspectSemaphore reports a semaphore's permits (never their owner tokens).
func (l *Locks) InspectSemaphore(ctx context.Context, name string) (*lockv1.InspectSemaphoreResponse, error) {
	reply, err := l.stub.InspectSemaphore(ctx, &lockv1.InspectSemaphoreRequest{Name: name})
	return reply, wrap(err)
}

// Held is a lock kept by a Hold stream: the server renews it for as long as the
// handle is open. Its methods are safe for concurrent use.
type Held struct {
	stream       lockv1.LockService_HoldClient
	cancel       context.CancelFunc
	fencingToken uint64
	lost         chan struct{}
	done         chan struct{}
	release      sync.Once

	mu         sync.Mutex
	expireTime time.Time
	err        error
	releasing  bool
}

// Hold acquires lock name (waiting up to opts.Wait, ErrLockHeld after) and keeps it
// until Release, until ctx ends, or until the server cannot renew it: then Lost()
// closes and Err() says why. Stop acting as the holder as soon as Lost() closes.
// ctx bounds the whole hold, so give it no deadline to hold indefinitely.
func (l *Locks) Hold(ctx context.Context, name string, ttl time.Duration, opts LockOptions) (*Held, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := l.stub.Hold(ctx)
	if err == nil {
		err = stream.Send(&lockv1.HoldRequest{Kind: &lockv1.HoldRequest_Acquire{Acquire: &lockv1.HoldAcquire{
			Name: name, Ttl: durationpb.New(ttl), Wait: optionalDuration(opts.Wait), Holder: opts.Holder,
			RenewInterval: optionalDuration(opts.RenewInterval), Replication: opts.replication(),
		}}})
	}
	var first *lockv1.HoldResponse
	if err == nil {
		first, err = stream.Recv()
	}
	if err != nil {
		cancel()
		return nil, wrap(err)
	}
	acquired := first.GetAcquired()
	if acquired == nil {
		cancel()
		return nil, &Error{Code: codes.Internal, Message: "Hold answered something before acquired"}
	}
	held := &Held{
		stream: stream, cancel: cancel, fencingToken: acquired.GetFencingToken(),
		expireTime: acquired.GetExpireTime().AsTime(), lost: make(chan struct{}), done: make(chan struct{}),
	}
	go held.follow()
	return held, nil
}

// follow reads the stream until it ends, recording renewals and a loss.
func (h *Held) follow() {
	defer close(h.done)
	for {
		event, err := h.stream.Recv()
		h.mu.Lock()
		switch {
		case err != nil:
			if !h.releasing || !errors.Is(err, io.EOF) {
				if h.err == nil {
					h.err = wrap(err)
				}
				if !h.releasing {
					close(h.lost)
				}
			}
			h.mu.Unlock()
			return
		case event.GetRenewed() != nil:
			h.expireTime = event.GetRenewed().GetExpireTime().AsTime()
		case event.GetLost() != nil:
			h.err = &Error{Code: codes.Aborted, Reason: "LEASE_LOST", Message: event.GetLost().GetMessage()}
		}
		h.mu.Unlock()
	}
}

// FencingToken is the grant's fencing token; pass it to every resource you write.
func (h *Held) FencingToken() uint64 { return h.fencingToken }

// ExpireTime is when the lock expires unless renewed again (Redis time).
func (h *Held) ExpireTime() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.expireTime
}

// Lost closes when the lock is lost: not renewable, ctx ended, or the stream broke.
// It does not close on Release.
func (h *Held) Lost() <-chan struct{} { return h.lost }

// Err says why the lock was lost (ErrLeaseLost, a context or transport error), or nil.
func (h *Held) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// Release gives the lock back and waits (within ctx) for the server to confirm. It
// answers the loss error if the lock had been lost before; calling it again is a no-op.
func (h *Held) Release(ctx context.Context) error {
	h.release.Do(func() {
		h.mu.Lock()
		alreadyLost := h.err != nil
		h.releasing = true
		h.mu.Unlock()
		if !alreadyLost {
			_ = h.stream.Send(&lockv1.HoldRequest{Kind: &lockv1.HoldRequest_Release{Release: &lockv1.HoldRelease{}}})
			_ = h.stream.CloseSend()
		}
		select {
		case <-h.done:
		case <-ctx.Done():
			h.mu.Lock()
			if h.err == nil {
				h.err = ctx.Err()
			}
			h.mu.Unlock()
		}
		h.cancel() // a cancelled stream is released by the server as soon as it notices
	})
	return h.Err()
}
