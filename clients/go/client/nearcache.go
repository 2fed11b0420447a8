package client

// A client-side near-cache kept correct by the server's WatchInvalidations stream
// (docs/near-cache.md). It serves a read only while its stream is synced. Every
// invalidation advances a sequence number; a read takes a ticket (the sequence and the
// time) when it starts, and its answer is stored only if no invalidation of that key,
// and no flush, came after: a late answer never brings back a value that a newer write
// invalidated.

import (
	"container/list"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// NearCacheOptions bound a NearCache. Zero fields take the defaults.
type NearCacheOptions struct {
	// MaxEntries caps the number of entries (default 10,000).
	MaxEntries int
	// MaxBytes caps the sum of the values' sizes (default 64 MiB).
	MaxBytes int64
	// MaxTTL caps how long an entry is kept, even when the server's TTL is longer or
	// absent (default 5 minutes). An entry never outlives the server's TTL.
	MaxTTL time.Duration
	// Prefixes narrows the stream (and so what is cached) to keys with these
	// prefixes; empty: every key of the namespace.
	Prefixes []string
	// MaxBackoff caps the wait between attempts to reopen a broken stream (default 5 s).
	MaxBackoff time.Duration
	// Clock replaces time.Now (tests).
	Clock func() time.Time
}

// NearCacheStats are counters since the near-cache was made, and its current size.
type NearCacheStats struct {
	Hits, Misses, Invalidations, Flushes, Evictions uint64
	Entries                                         int
	Bytes                                           int64
	Synced                                          bool
}

// NearTicket is what Begin answers: pass it to Fill or Abandon.
type NearTicket struct {
	sequence uint64
	started  time.Time
}

type nearEntry struct {
	key       string
	value     Value
	expiresAt time.Time
}

// NearCache is a bounded LRU (by entries and by value bytes) of values read from the
// server, invalidated by a follower goroutine that reads WatchInvalidations. It is
// safe for concurrent use. Make one with NewNearCache (which starts the follower), or
// with NewNearCacheCore (no follower: drive it with Apply, for tests and custom
// transports); Close stops the follower.
type NearCache struct {
	maxEntries int
	maxBytes   int64
	maxTTL     time.Duration
	clock      func() time.Time

	mu      sync.Mutex
	entries map[string]*list.Element // of *nearEntry, most recently used at the front
	lru     list.List
	bytes   int64
	synced  bool
	// sequence counts invalidations and flushes; flushedAt is the sequence of the last
	// flush; invalidatedAt the sequence of each key's last invalidation, kept only while
	// reads are in flight (so it stays bounded).
	sequence, flushedAt uint64
	invalidatedAt       map[string]uint64
	readsInFlight       int
	stats               NearCacheStats
	syncedCh            chan struct{} // closed while synced; replaced on flush

	server  cachev1.CacheServiceClient
	stop    context.CancelFunc
	stopped chan struct{}
}

// NewNearCacheCore makes a near-cache with no follower: it stays unsynced (serving
// nothing) until Apply is given a `synced` event.
func NewNearCacheCore(opts NearCacheOptions) (*NearCache, error) {
	if opts.MaxEntries < 0 || opts.MaxBytes < 0 || opts.MaxTTL < 0 || opts.MaxBackoff < 0 {
		return nil, errors.New("near-cache bounds must be positive")
	}
	n := &NearCache{
		maxEntries:    orDefault(opts.MaxEntries, 10_000),
		maxBytes:      orDefault(opts.MaxBytes, 64<<20),
		maxTTL:        orDefault(opts.MaxTTL, 5*time.Minute),
		clock:         opts.Clock,
		entries:       map[string]*list.Element{},
		invalidatedAt: map[string]uint64{},
		syncedCh:      make(chan struct{}),
	}
	if n.clock == nil {
		n.clock = time.Now
	}
	return n, nil
}

// NewNearCache makes a near-cache filled by reads through server and kept in step by a
// goroutine that follows server.WatchInvalidations until Close: when the stream
// breaks it flushes the cache (which then serves nothing) and reopens the stream with
// jittered exponential backoff. server is typically cachev1.NewCacheServiceClient(conn)
// on a connection that carries the namespace.
func NewNearCache(server cachev1.CacheServiceClient, opts NearCacheOptions) (*NearCache, error) {
	n, err := NewNearCacheCore(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.server, n.stop, n.stopped = server, cancel, make(chan struct{})
	request := &cachev1.WatchInvalidationsRequest{Prefixes: opts.Prefixes}
	go n.follow(ctx, request, orDefault(opts.MaxBackoff, 5*time.Second))
	return n, nil
}

func orDefault[T comparable](value, fallback T) T {
	var zero T
	if value == zero {
		return fallback
	}
	return value
}

// Close stops the follower and waits for it; the cache is flushed and serves nothing.
func (n *NearCache) Close() {
	if n.stop != nil {
		n.stop()
		<-n.stopped
	}
	n.FlushAll()
}

func (n *NearCache) follow(ctx context.Context, request *cachev1.WatchInvalidationsRequest, maxBackoff time.Duration) {
	defer close(n.stopped)
	const firstBackoff = 50 * time.Millisecond
	backoff := firstBackoff
	for ctx.Err() == nil {
		stream, err := n.server.WatchInvalidations(ctx, request)
		for err == nil {
			var event *cachev1.WatchInvalidationsResponse
			if event, err = stream.Recv(); err == nil {
				n.Apply(event)
				backoff = firstBackoff
			}
		}
		n.FlushAll()
		wait := time.Duration(float64(backoff) * (0.5 + rand.Float64()))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// Apply applies one event of the WatchInvalidations stream.
func (n *NearCache) Apply(event *cachev1.WatchInvalidationsResponse) {
	switch e := event.GetEvent().(type) {
	case *cachev1.WatchInvalidationsResponse_Synced:
		n.MarkSynced()
	case *cachev1.WatchInvalidationsResponse_Keys:
		n.Invalidate(e.Keys.GetKeys()...)
	case *cachev1.WatchInvalidationsResponse_FlushAll:
		n.FlushAll()
	}
}

// Synced reports whether the stream is synced (the cache serves reads).
func (n *NearCache) Synced() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.synced
}

// WaitSynced blocks until the stream is synced or ctx ends.
func (n *NearCache) WaitSynced(ctx context.Context) error {
	n.mu.Lock()
	ch := n.syncedCh
	n.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Lookup answers the near-cached value of key if it is there, fresh, and the stream
// is synced. The Data is a copy the caller may keep and change.
func (n *NearCache) Lookup(key string) (Value, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var element *list.Element
	if n.synced {
		element = n.entries[key]
	}
	if element != nil && !n.clock().Before(element.Value.(*nearEntry).expiresAt) {
		n.drop(key)
		element = nil
	}
	if element == nil {
		n.stats.Misses++
		return Value{}, false
	}
	n.lru.MoveToFront(element)
	n.stats.Hits++
	entry := element.Value.(*nearEntry)
	return Value{Data: append([]byte(nil), entry.value.Data...), Version: entry.value.Version}, true
}

// Begin is called before sending a read whose answer may be filled in. Every Begin
// must be followed by one Fill or Abandon with its ticket.
func (n *NearCache) Begin() NearTicket {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.readsInFlight++
	return NearTicket{sequence: n.sequence, started: n.clock()}
}

// Fill stores what a read begun at ticket answered; ttl is the server's remaining TTL
// (hasTTL false: none). The entry expires at most ttl after the read began, so never
// after the server's copy. It answers false, storing nothing, when the answer must not
// be cached: the stream is not synced, or the key was invalidated (or everything
// flushed) since the read began, or the value is larger than the cache. A stored entry
// keeps value.Data itself: the caller must not change it afterwards.
func (n *NearCache) Fill(ticket NearTicket, key string, value Value, ttl time.Duration, hasTTL bool) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	defer n.endRead()
	invalidatedAt, invalidated := n.invalidatedAt[key]
	if !n.synced || ticket.sequence < n.flushedAt || (invalidated && invalidatedAt > ticket.sequence) ||
		int64(len(value.Data)) > n.maxBytes || (hasTTL && ttl <= 0) {
		return false
	}
	lifetime := n.maxTTL
	if hasTTL && ttl < lifetime {
		lifetime = ttl
	}
	n.drop(key)
	entry := &nearEntry{key: key, value: Value{Data: value.Data, Version: value.Version}, expiresAt: ticket.started.Add(lifetime)}
	n.entries[key] = n.lru.PushFront(entry)
	n.bytes += int64(len(value.Data))
	n.evict()
	return true
}

// Abandon ends a read begun at ticket that has no answer to store.
func (n *NearCache) Abandon(ticket NearTicket) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.endRead()
}

// Invalidate drops keys (they changed on the server).
func (n *NearCache) Invalidate(keys ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sequence++
	for _, key := range keys {
		n.stats.Invalidations++
		n.drop(key)
		if n.readsInFlight > 0 {
			n.invalidatedAt[key] = n.sequence
		}
	}
}

// FlushAll drops everything and serves nothing until the next `synced` (a gap).
func (n *NearCache) FlushAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.synced {
		n.syncedCh = make(chan struct{})
	}
	n.synced = false
	n.sequence++
	n.flushedAt = n.sequence
	clear(n.entries)
	clear(n.invalidatedAt)
	n.lru.Init()
	n.bytes = 0
	n.stats.Flushes++
}

// MarkSynced starts serving (the stream sent `synced`).
func (n *NearCache) MarkSynced() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.synced {
		close(n.syncedCh)
	}
	n.synced = true
}

// Stats answers the counters and the current size.
func (n *NearCache) Stats() NearCacheStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	stats := n.stats
	stats.Entries, stats.Bytes, stats.Synced = len(n.entries), n.bytes, n.synced
	return stats
}

// Get reads key from the near-cache, or else from the server (with include_ttl),
// filling the near-cache with the answer; nil, nil when the key is absent (as
// Client.Get answers).
func (n *NearCache) Get(ctx context.Context, key string) (*Value, error) {
	if value, ok := n.Lookup(key); ok {
		return &value, nil
	}
	ticket := n.Begin()
	reply, err := n.server.Get(ctx, &cachev1.GetRequest{Key: key, IncludeTtl: true})
	if err != nil || !reply.GetFound() {
		n.Abandon(ticket)
		return nil, err
	}
	value := Value{Data: reply.GetValue(), Version: reply.GetVersion()}
	n.Fill(ticket, key, value, reply.GetTtl().AsDuration(), reply.GetTtl() != nil)
	return &Value{Data: append([]byte(nil), value.Data...), Version: value.Version}, nil
}

// GetMany reads keys, each from the near-cache or else (all the missing ones in one
// GetMany with include_ttl) from the server, filling the near-cache with the answers.
// Like Client.GetMany, the answer has one entry per key, in order, nil for an absent key.
func (n *NearCache) GetMany(ctx context.Context, keys ...string) ([]*Value, error) {
	values := make([]*Value, len(keys))
	var missing []string
	wanted := map[string][]int{} // positions of each missing key (keys may repeat)
	for i, key := range keys {
		if positions, seen := wanted[key]; seen {
			wanted[key] = append(positions, i)
		} else if value, ok := n.Lookup(key); ok {
			values[i] = &value
		} else {
			wanted[key] = []int{i}
			missing = append(missing, key)
		}
	}
	if len(missing) == 0 {
		return values, nil
	}
	ticket := n.begin(len(missing))
	reply, err := n.server.GetMany(ctx, &cachev1.GetManyRequest{Keys: missing, IncludeTtl: true})
	if err != nil {
		n.abandon(len(missing))
		return nil, err
	}
	for i, key := range missing {
		var entry *cachev1.Entry
		if i < len(reply.GetEntries()) {
			entry = reply.GetEntries()[i]
		}
		if !entry.GetFound() {
			n.Abandon(ticket)
			continue
		}
		value := Value{Data: entry.GetValue(), Version: entry.GetVersion()}
		n.Fill(ticket, key, value, entry.GetTtl().AsDuration(), entry.GetTtl() != nil)
		for _, position := range wanted[key] {
			values[position] = &Value{Data: append([]byte(nil), value.Data...), Version: value.Version}
		}
	}
	return values, nil
}

// begin is Begin for count reads sent together (each ends with its own Fill or Abandon).
func (n *NearCache) begin(count int) NearTicket {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.readsInFlight += count
	return NearTicket{sequence: n.sequence, started: n.clock()}
}

func (n *NearCache) abandon(count int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for range count {
		n.endRead()
	}
}

// -- under the lock ----------------------------------------------------------------

func (n *NearCache) drop(key string) {
	if element, ok := n.entries[key]; ok {
		n.bytes -= int64(len(element.Value.(*nearEntry).value.Data))
		n.lru.Remove(element)
		delete(n.entries, key)
	}
}

func (n *NearCache) evict() {
	for len(n.entries) > n.maxEntries || n.bytes > n.maxBytes {
		n.drop(n.lru.Back().Value.(*nearEntry).key)
		n.stats.Evictions++
	}
}

func (n *NearCache) endRead() {
	n.readsInFlight--
	if n.readsInFlight == 0 {
		// No read can still be affected by these; forget them so memory stays bounded.
		clear(n.invalidatedAt)
	}
}
