package client

import (
	"context"
	"fmt"
	"iter"
	"time"

	eventbusv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/eventbus/v1"
)

// Events is EventBusService: pub/sub (Publish, Subscribe: at-most-once) and durable
// streams (Append, Read, consumer groups with Consume and Ack: at-least-once).
type Events struct {
	stub eventbusv1.EventBusServiceClient
}

// Event is the CloudEvents-like event the bus carries.
type Event = eventbusv1.Event

// Publish sends event to topic's current subscriptions; answers how many got it.
func (e *Events) Publish(ctx context.Context, topic string, event *Event) (int64, error) {
	reply, err := e.stub.Publish(ctx, &eventbusv1.PublishRequest{Topic: topic, Event: event, RequestId: newRequestID()})
	return reply.GetReceivers(), wrap(err)
}

// Subscribe subscribes to topics and to topics matching the glob patterns. It
// returns once the subscriptions are in place, so every event published from then
// on is delivered. The iterator yields each message until ctx ends or the stream
// fails (the error is yielded last); stop it to unsubscribe (also cancel ctx).
func (e *Events) Subscribe(ctx context.Context, topics, patterns []string) (iter.Seq2[*eventbusv1.TopicMessage, error], error) {
	stream, err := e.stub.Subscribe(ctx, &eventbusv1.SubscribeRequest{Topics: topics, Patterns: patterns})
	if err != nil {
		return nil, wrap(err)
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, wrap(err)
	}
	if first.GetActive() == nil {
		return nil, fmt.Errorf("cachet: Subscribe began with %v, not active", first)
	}
	return func(yield func(*eventbusv1.TopicMessage, error) bool) {
		for {
			reply, err := stream.Recv()
			if err != nil {
				yield(nil, wrap(err))
				return
			}
			if message := reply.GetMessage(); message != nil && !yield(message, nil) {
				return
			}
		}
	}, nil
}

// Append adds event to the durable stream and answers its id; maxLen > 0 trims the
// stream to about that many events.
func (e *Events) Append(ctx context.Context, stream string, event *Event, maxLen int64) (string, error) {
	request := &eventbusv1.AppendRequest{Stream: stream, Event: event, RequestId: newRequestID()}
	if maxLen > 0 {
		request.MaxLen = &maxLen
	}
	reply, err := e.stub.Append(ctx, request)
	return reply.GetId(), wrap(err)
}

// Read answers up to count events of stream after afterID ("" or "0-0": from the
// start), waiting up to block for one; pass the last id read as the next afterID.
func (e *Events) Read(ctx context.Context, stream, afterID string, count int32, block time.Duration) ([]*Event, error) {
	reply, err := e.stub.Read(ctx, &eventbusv1.ReadRequest{Stream: stream, AfterId: afterID, Count: count, Block: optionalDuration(block)})
	return reply.GetEvents(), wrap(err)
}

// DeadLetters reads the dead-letter stream "<stream>:dead" like Read; each event's
// DeadLetter says where it came from.
func (e *Events) DeadLetters(ctx context.Context, stream, afterID string, count int32) ([]*Event, error) {
	return e.Read(ctx, stream+":dead", afterID, count, 0)
}

// Range answers one page of stream's events between ids start and end ("": open),
// oldest first unless reverse; an empty next token is the last page.
func (e *Events) Range(ctx context.Context, stream, start, end string, reverse bool, pageSize int32, pageToken string) (page []*Event, next string, err error) {
	reply, err := e.stub.Range(ctx, &eventbusv1.RangeRequest{
		Stream: stream, Start: start, End: end, Reverse: reverse, PageSize: pageSize, PageToken: pageToken,
	})
	return reply.GetEvents(), reply.GetNextPageToken(), wrap(err)
}

// GroupOptions refine CreateGroup.
type GroupOptions struct {
	// StartID: deliver events after this id; "" or "$": only new ones, "0": all.
	StartID string
	// CreateStream creates a missing stream (else ErrStreamNotFound).
	CreateStream bool
	// IfNotExists makes an existing group no error (else ErrGroupExists).
	IfNotExists bool
	// MaxDeliveries > 0 moves an event delivered that often to "<stream>:dead".
	MaxDeliveries int64
}

// CreateGroup creates consumer group on stream; false when it existed (IfNotExists).
func (e *Events) CreateGroup(ctx context.Context, stream, group string, opts GroupOptions) (bool, error) {
	request := &eventbusv1.CreateGroupRequest{
		Stream: stream, Group: group, StartId: opts.StartID, CreateStream: opts.CreateStream, IfNotExists: opts.IfNotExists,
	}
	if opts.MaxDeliveries > 0 {
		request.DeadLetter = &eventbusv1.DeadLetterPolicy{MaxDeliveries: opts.MaxDeliveries}
	}
	reply, err := e.stub.CreateGroup(ctx, request)
	return reply.GetCreated(), wrap(err)
}

// DeleteGroup destroys group with its pending entries; false when it did not exist.
func (e *Events) DeleteGroup(ctx context.Context, stream, group string) (bool, error) {
	reply, err := e.stub.DeleteGroup(ctx, &eventbusv1.DeleteGroupRequest{Stream: stream, Group: group})
	return reply.GetDeleted(), wrap(err)
}

// Delivery is an event delivered to a consumer of a group; it stays pending until
// Ack.
type Delivery struct {
	*Event
	events        *Events
	stream, group string
}

// Ack acknowledges the event: it is never delivered to the group again.
func (d *Delivery) Ack(ctx context.Context) error {
	_, err := d.events.Ack(ctx, d.stream, d.group, d.GetId())
	return err
}

// ConsumeOptions refine Consume.
type ConsumeOptions struct {
	// BatchSize is how many events one round fetches (0: the server's default).
	BatchSize int32
	// Block is how long a round waits for new events (0: the server's default).
	Block time.Duration
	// AutoClaimMinIdle > 0 takes over events of other consumers idle that long.
	AutoClaimMinIdle time.Duration
	// RedeliverPending first delivers this consumer's own unacknowledged events.
	RedeliverPending bool
	// MaxPending > 0 pauses delivery while this consumer has that many unacked.
	MaxPending int64
}

// Consume delivers group's events to consumer, at-least-once: each Delivery stays
// pending until acked. The iterator runs until ctx ends or the stream fails (the
// error is yielded last, e.g. ErrGroupNotFound); stop it to end the call.
func (e *Events) Consume(ctx context.Context, stream, group, consumer string, opts ConsumeOptions) iter.Seq2[*Delivery, error] {
	return func(yield func(*Delivery, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		call, err := e.stub.Consume(ctx, &eventbusv1.ConsumeRequest{
			Stream: stream, Group: group, Consumer: consumer, BatchSize: opts.BatchSize, Block: optionalDuration(opts.Block),
			AutoClaimMinIdle: optionalDuration(opts.AutoClaimMinIdle), RedeliverPending: opts.RedeliverPending,
			MaxPending: opts.MaxPending,
		})
		if err != nil {
			yield(nil, wrap(err))
			return
		}
		for {
			batch, err := call.Recv()
			if err != nil {
				yield(nil, wrap(err))
				return
			}
			for _, event := range batch.GetEvents() {
				if !yield(&Delivery{Event: event, events: e, stream: stream, group: group}, nil) {
					return
				}
			}
		}
	}
}

// Ack acknowledges ids in group; answers how many were pending (Ack is idempotent).
func (e *Events) Ack(ctx context.Context, stream, group string, ids ...string) (int64, error) {
	reply, err := e.stub.Ack(ctx, &eventbusv1.AckRequest{Stream: stream, Group: group, Ids: ids})
	return reply.GetAcked(), wrap(err)
}

// Pending summarizes group's delivered, unacknowledged events.
func (e *Events) Pending(ctx context.Context, stream, group string) (*eventbusv1.PendingResponse, error) {
	reply, err := e.stub.Pending(ctx, &eventbusv1.PendingRequest{Stream: stream, Group: group})
	return reply, wrap(err)
}

// ListPending answers one page of group's pending events (fill request's Stream and
// Group; Consumer, MinIdle and paging are optional).
func (e *Events) ListPending(ctx context.Context, request *eventbusv1.ListPendingRequest) (*eventbusv1.ListPendingResponse, error) {
	reply, err := e.stub.ListPending(ctx, request)
	return reply, wrap(err)
}

// Claimed is what Claim took over.
type Claimed struct {
	// Deliveries now belong to the claiming consumer: process and Ack them.
	Deliveries []*Delivery
	// DeadLettered were moved to "<stream>:dead" instead (delivery limit reached).
	DeadLettered []string
	// NextStartID continues the sweep; "" when the pending list was scanned.
	NextStartID string
}

// Claim gives consumer the events of group pending for at least minIdle, scanning
// from startID ("": the start); or exactly ids when given.
func (e *Events) Claim(ctx context.Context, stream, group, consumer string, minIdle time.Duration, startID string, ids ...string) (*Claimed, error) {
	reply, err := e.stub.Claim(ctx, &eventbusv1.ClaimRequest{
		Stream: stream, Group: group, Consumer: consumer, MinIdle: optionalDuration(minIdle), StartId: startID, Ids: ids,
	})
	if err != nil {
		return nil, wrap(err)
	}
	claimed := &Claimed{DeadLettered: reply.GetDeadLetteredIds(), NextStartID: reply.GetNextStartId()}
	for _, event := range reply.GetEvents() {
		claimed.Deliveries = append(claimed.Deliveries, &Delivery{Event: event, events: e, stream: stream, group: group})
	}
	return claimed, nil
}

// Trim keeps the newest maxLen events of stream (approximate: faster, may keep a
// few more); answers how many were removed.
func (e *Events) Trim(ctx context.Context, stream string, maxLen int64, approximate bool) (int64, error) {
	reply, err := e.stub.Trim(ctx, &eventbusv1.TrimRequest{Stream: stream, Strategy: &eventbusv1.TrimRequest_MaxLen{MaxLen: maxLen}, Approximate: approximate})
	return reply.GetTrimmed(), wrap(err)
}

// TrimBefore removes stream's events with ids below minID.
func (e *Events) TrimBefore(ctx context.Context, stream, minID string, approximate bool) (int64, error) {
	reply, err := e.stub.Trim(ctx, &eventbusv1.TrimRequest{Stream: stream, Strategy: &eventbusv1.TrimRequest_MinId{MinId: minID}, Approximate: approximate})
	return reply.GetTrimmed(), wrap(err)
}

// Info describes stream: length, ids, groups (and their consumers when asked).
func (e *Events) Info(ctx context.Context, stream string, includeConsumers bool) (*eventbusv1.InfoResponse, error) {
	reply, err := e.stub.Info(ctx, &eventbusv1.InfoRequest{Stream: stream, IncludeConsumers: includeConsumers})
	return reply, wrap(err)
}
