package client

import (
	"context"
	"time"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// Collections (hashes, lists, sets, sorted sets) and bits share the cache's key
// space; Delete, Exists, Expire and TTL work on them too. Each call is one RPC.

// CollectionTTL is the TTL a collection write sets in the same atomic step: TTL for
// a collection it creates (0: the server's default), and with Refresh also for an
// existing one.
type CollectionTTL struct {
	TTL     time.Duration
	Refresh bool
}

func (t CollectionTTL) proto() *cachev1.CollectionTtl {
	if t.TTL == 0 && !t.Refresh {
		return nil
	}
	return &cachev1.CollectionTtl{Ttl: optionalDuration(t.TTL), RefreshTtl: t.Refresh}
}

// Field is a hash field.
type Field struct {
	Name  string
	Value []byte
}

func fields(in []*cachev1.HashField) []Field {
	out := make([]Field, len(in))
	for i, f := range in {
		out[i] = Field{Name: f.GetField(), Value: f.GetValue()}
	}
	return out
}

// HashSet sets fields of the hash at key (ifAbsent: only fields it lacks); answers
// how many fields were added.
func (c *Client) HashSet(ctx context.Context, key string, values []Field, ifAbsent bool, ttl CollectionTTL) (int64, error) {
	reply, err := c.cache.HashSet(ctx, hashSetRequest(key, values, ifAbsent, ttl))
	return reply.GetAdded(), wrap(err)
}

func hashSetRequest(key string, values []Field, ifAbsent bool, ttl CollectionTTL) *cachev1.HashSetRequest {
	request := &cachev1.HashSetRequest{Key: key, IfAbsent: ifAbsent, Ttl: ttl.proto()}
	for _, f := range values {
		request.Fields = append(request.Fields, &cachev1.HashField{Field: f.Name, Value: f.Value})
	}
	return request
}

// HashGet reads fields; the answer has one value per field, in order, nil when absent.
func (c *Client) HashGet(ctx context.Context, key string, names ...string) ([][]byte, error) {
	reply, err := c.cache.HashGet(ctx, &cachev1.HashGetRequest{Key: key, Fields: names})
	if err != nil {
		return nil, wrap(err)
	}
	return hashValues(reply), nil
}

// hashValues is HashGet's answer: one value per field, nil when absent.
func hashValues(reply *cachev1.HashGetResponse) [][]byte {
	values := make([][]byte, len(reply.GetFields()))
	for i, f := range reply.GetFields() {
		if f.GetFound() {
			values[i] = f.GetValue()
		}
	}
	return values
}

// HashGetAll reads every field (use HashScan for large hashes).
func (c *Client) HashGetAll(ctx context.Context, key string) ([]Field, error) {
	reply, err := c.cache.HashGetAll(ctx, &cachev1.HashGetAllRequest{Key: key})
	return fields(reply.GetFields()), wrap(err)
}

// HashDelete removes fields; answers how many existed.
func (c *Client) HashDelete(ctx context.Context, key string, names ...string) (int64, error) {
	reply, err := c.cache.HashDelete(ctx, &cachev1.HashDeleteRequest{Key: key, Fields: names})
	return reply.GetDeleted(), wrap(err)
}

// HashIncrement adds by to an integer field, creating it at 0; answers the new value.
func (c *Client) HashIncrement(ctx context.Context, key, field string, by int64, ttl CollectionTTL) (int64, error) {
	reply, err := c.cache.HashIncrement(ctx, &cachev1.HashIncrementRequest{
		Key: key, Field: field, Delta: &cachev1.HashIncrementRequest_ByInt{ByInt: by}, Ttl: ttl.proto(), RequestId: newRequestID(),
	})
	return reply.GetIntValue(), wrap(err)
}

// HashIncrementFloat adds by to a float field, creating it at 0; answers the new value.
func (c *Client) HashIncrementFloat(ctx context.Context, key, field string, by float64, ttl CollectionTTL) (float64, error) {
	reply, err := c.cache.HashIncrement(ctx, &cachev1.HashIncrementRequest{
		Key: key, Field: field, Delta: &cachev1.HashIncrementRequest_ByFloat{ByFloat: by}, Ttl: ttl.proto(), RequestId: newRequestID(),
	})
	return reply.GetFloatValue(), wrap(err)
}

// HashKeys lists the field names.
func (c *Client) HashKeys(ctx context.Context, key string) ([]string, error) {
	reply, err := c.cache.HashKeys(ctx, &cachev1.HashKeysRequest{Key: key})
	return reply.GetFields(), wrap(err)
}

// HashValues lists the field values.
func (c *Client) HashValues(ctx context.Context, key string) ([][]byte, error) {
	reply, err := c.cache.HashValues(ctx, &cachev1.HashValuesRequest{Key: key})
	return reply.GetValues(), wrap(err)
}

// HashLength counts the fields.
func (c *Client) HashLength(ctx context.Context, key string) (int64, error) {
	reply, err := c.cache.HashLength(ctx, &cachev1.HashLengthRequest{Key: key})
	return reply.GetLength(), wrap(err)
}

// HashScan reads one page of fields matching the glob match ("": all) from
// pageToken ("": the start); an empty next token ends the scan.
func (c *Client) HashScan(ctx context.Context, key, match, pageToken string, pageSize int32) (page []Field, next string, err error) {
	reply, err := c.cache.HashScan(ctx, &cachev1.HashScanRequest{Key: key, Match: match, PageToken: pageToken, PageSize: pageSize})
	return fields(reply.GetFields()), reply.GetNextPageToken(), wrap(err)
}

// List ends for the List* calls.
const (
	Left  = cachev1.ListEnd_LIST_END_LEFT
	Right = cachev1.ListEnd_LIST_END_RIGHT
)

// ListPush pushes values at end of the list; keepNewest > 0 then trims it to that
// many entries. Answers the new length.
func (c *Client) ListPush(ctx context.Context, key string, end cachev1.ListEnd, values [][]byte, keepNewest int64, ttl CollectionTTL) (int64, error) {
	reply, err := c.cache.ListPush(ctx, &cachev1.ListPushRequest{
		Key: key, Values: values, End: end, KeepNewest: keepNewest, Ttl: ttl.proto(), RequestId: newRequestID(),
	})
	return reply.GetLength(), wrap(err)
}

// ListPop pops up to count values from end, waiting up to wait (0: no wait) for one.
func (c *Client) ListPop(ctx context.Context, key string, end cachev1.ListEnd, count int32, wait time.Duration) ([][]byte, error) {
	reply, err := c.cache.ListPop(ctx, &cachev1.ListPopRequest{Key: key, End: end, Count: count, Wait: optionalDuration(wait)})
	return reply.GetValues(), wrap(err)
}

// ListRange reads the values from start to end (inclusive, negative from the end).
func (c *Client) ListRange(ctx context.Context, key string, start, end int64) ([][]byte, error) {
	reply, err := c.cache.ListRange(ctx, &cachev1.ListRangeRequest{Key: key, Range: &cachev1.IndexRange{Start: start, End: end}})
	return reply.GetValues(), wrap(err)
}

// ListTrim keeps only start..end; answers the new length.
func (c *Client) ListTrim(ctx context.Context, key string, start, end int64) (int64, error) {
	reply, err := c.cache.ListTrim(ctx, &cachev1.ListTrimRequest{Key: key, Range: &cachev1.IndexRange{Start: start, End: end}})
	return reply.GetLength(), wrap(err)
}

// ListLength counts the values.
func (c *Client) ListLength(ctx context.Context, key string) (int64, error) {
	reply, err := c.cache.ListLength(ctx, &cachev1.ListLengthRequest{Key: key})
	return reply.GetLength(), wrap(err)
}

// ListRemove removes occurrences of value (count > 0 from the head, < 0 from the
// tail, 0 all); answers how many.
func (c *Client) ListRemove(ctx context.Context, key string, value []byte, count int64) (int64, error) {
	reply, err := c.cache.ListRemove(ctx, &cachev1.ListRemoveRequest{Key: key, Value: value, Count: count})
	return reply.GetRemoved(), wrap(err)
}

// ListMove pops from one end of source and pushes onto destination (same slot),
// waiting up to wait; answers the value, or nil when source stayed empty.
func (c *Client) ListMove(ctx context.Context, source, destination string, from, to cachev1.ListEnd, wait time.Duration, ttl CollectionTTL) ([]byte, error) {
	reply, err := c.cache.ListMove(ctx, &cachev1.ListMoveRequest{
		Source: source, Destination: destination, From: from, To: to, Wait: optionalDuration(wait), Ttl: ttl.proto(),
	})
	if err != nil || !reply.GetMoved() {
		return nil, wrap(err)
	}
	return reply.GetValue(), nil
}

// SetAdd adds members to the set; answers how many were new.
func (c *Client) SetAdd(ctx context.Context, key string, ttl CollectionTTL, members ...[]byte) (int64, error) {
	reply, err := c.cache.SetAdd(ctx, &cachev1.SetAddRequest{Key: key, Members: members, Ttl: ttl.proto()})
	return reply.GetAdded(), wrap(err)
}

// SetRemove removes members; answers how many were there.
func (c *Client) SetRemove(ctx context.Context, key string, members ...[]byte) (int64, error) {
	reply, err := c.cache.SetRemove(ctx, &cachev1.SetRemoveRequest{Key: key, Members: members})
	return reply.GetRemoved(), wrap(err)
}

// SetMembers lists the members.
func (c *Client) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	reply, err := c.cache.SetMembers(ctx, &cachev1.SetMembersRequest{Key: key})
	return reply.GetMembers(), wrap(err)
}

// SetIsMember tells, per value in order, whether it is a member.
func (c *Client) SetIsMember(ctx context.Context, key string, values ...[]byte) ([]bool, error) {
	reply, err := c.cache.SetIsMember(ctx, &cachev1.SetIsMemberRequest{Key: key, Members: values})
	return reply.GetIsMember(), wrap(err)
}

// SetCardinality counts the members.
func (c *Client) SetCardinality(ctx context.Context, key string) (int64, error) {
	reply, err := c.cache.SetCardinality(ctx, &cachev1.SetCardinalityRequest{Key: key})
	return reply.GetCardinality(), wrap(err)
}

// SetRandomMembers samples count members without removing them (count < 0 allows
// repeats).
func (c *Client) SetRandomMembers(ctx context.Context, key string, count int32) ([][]byte, error) {
	reply, err := c.cache.SetRandomMembers(ctx, &cachev1.SetRandomMembersRequest{Key: key, Count: count})
	return reply.GetMembers(), wrap(err)
}

// SetPop removes and answers count random members.
func (c *Client) SetPop(ctx context.Context, key string, count int32) ([][]byte, error) {
	reply, err := c.cache.SetPop(ctx, &cachev1.SetPopRequest{Key: key, Count: count})
	return reply.GetMembers(), wrap(err)
}

// SetMove moves member from source to destination (same slot); false when it was
// not in source.
func (c *Client) SetMove(ctx context.Context, source, destination string, member []byte, ttl CollectionTTL) (bool, error) {
	reply, err := c.cache.SetMove(ctx, &cachev1.SetMoveRequest{Source: source, Destination: destination, Member: member, Ttl: ttl.proto()})
	return reply.GetMoved(), wrap(err)
}

// Set operations for SetCombine.
const (
	Intersect = cachev1.SetOperation_SET_OPERATION_INTERSECT
	Union     = cachev1.SetOperation_SET_OPERATION_UNION
	Diff      = cachev1.SetOperation_SET_OPERATION_DIFF
)

// SetCombine answers the members of op over the sets at keys (one slot).
func (c *Client) SetCombine(ctx context.Context, op cachev1.SetOperation, keys ...string) ([][]byte, error) {
	reply, err := c.cache.SetCombine(ctx, &cachev1.SetCombineRequest{Operation: op, Keys: keys})
	return reply.GetMembers(), wrap(err)
}

// SetCombineStore stores op over the sets at keys into destination (same slot, ttl
// 0: the default) and answers its cardinality.
func (c *Client) SetCombineStore(ctx context.Context, op cachev1.SetOperation, destination string, ttl time.Duration, keys ...string) (int64, error) {
	reply, err := c.cache.SetCombine(ctx, &cachev1.SetCombineRequest{
		Operation: op, Keys: keys, Destination: destination, DestinationTtl: optionalDuration(ttl),
	})
	return reply.GetCardinality(), wrap(err)
}

// Scored is a sorted-set member with its score.
type Scored struct {
	Member []byte
	Score  float64
}

func scored(in []*cachev1.ScoredMember) []Scored {
	out := make([]Scored, len(in))
	for i, m := range in {
		out[i] = Scored{Member: m.GetMember(), Score: m.GetScore()}
	}
	return out
}

// SortedSetAdd adds or updates members under condition (the zero value: always);
// answers how many were added and how many added or changed.
func (c *Client) SortedSetAdd(ctx context.Context, key string, condition cachev1.SortedSetAddCondition, ttl CollectionTTL, members ...Scored) (added, changed int64, err error) {
	request := &cachev1.SortedSetAddRequest{Key: key, Condition: condition, Ttl: ttl.proto()}
	for _, m := range members {
		request.Members = append(request.Members, &cachev1.ScoredMember{Member: m.Member, Score: m.Score})
	}
	reply, err := c.cache.SortedSetAdd(ctx, request)
	return reply.GetAdded(), reply.GetChanged(), wrap(err)
}

// SortedSetIncrement adds delta to member's score; answers the new score.
func (c *Client) SortedSetIncrement(ctx context.Context, key string, member []byte, delta float64, ttl CollectionTTL) (float64, error) {
	reply, err := c.cache.SortedSetIncrement(ctx, &cachev1.SortedSetIncrementRequest{
		Key: key, Member: member, Delta: delta, Ttl: ttl.proto(), RequestId: newRequestID(),
	})
	return reply.GetScore(), wrap(err)
}

// Orders for the sorted-set calls.
const (
	Ascending  = cachev1.Order_ORDER_ASCENDING
	Descending = cachev1.Order_ORDER_DESCENDING
)

// SortedSetRank answers member's 0-based rank in order; found is false when absent.
func (c *Client) SortedSetRank(ctx context.Context, key string, member []byte, order cachev1.Order) (rank int64, found bool, err error) {
	reply, err := c.cache.SortedSetRank(ctx, &cachev1.SortedSetRankRequest{Key: key, Member: member, Order: order})
	return reply.GetRank(), reply.GetFound(), wrap(err)
}

// SortedSetRangeByRank reads members ranked start..end (inclusive, negative from the
// end) in order.
func (c *Client) SortedSetRangeByRank(ctx context.Context, key string, start, end int64, order cachev1.Order) ([]Scored, error) {
	reply, err := c.cache.SortedSetRange(ctx, &cachev1.SortedSetRangeRequest{
		Key: key, Order: order, Range: &cachev1.SortedSetRangeRequest_ByRank{ByRank: &cachev1.IndexRange{Start: start, End: end}},
	})
	return scored(reply.GetMembers()), wrap(err)
}

// ScoreRange bounds scores: nil Min or Max is unbounded.
type ScoreRange struct {
	Min, Max                   *float64
	ExclusiveMin, ExclusiveMax bool
}

func (r ScoreRange) proto() *cachev1.ScoreRange {
	out := &cachev1.ScoreRange{}
	if r.Min != nil {
		out.Min = &cachev1.ScoreBound{Value: *r.Min, Exclusive: r.ExclusiveMin}
	}
	if r.Max != nil {
		out.Max = &cachev1.ScoreBound{Value: *r.Max, Exclusive: r.ExclusiveMax}
	}
	return out
}

// SortedSetRangeByScore reads members within scores in order, skipping offset and
// answering at most limit (0: no limit).
func (c *Client) SortedSetRangeByScore(ctx context.Context, key string, scores ScoreRange, order cachev1.Order, offset, limit int64) ([]Scored, error) {
	reply, err := c.cache.SortedSetRange(ctx, &cachev1.SortedSetRangeRequest{
		Key: key, Order: order, Offset: offset, Limit: limit, Range: &cachev1.SortedSetRangeRequest_ByScore{ByScore: scores.proto()},
	})
	return scored(reply.GetMembers()), wrap(err)
}

// SortedSetCount counts members within scores.
func (c *Client) SortedSetCount(ctx context.Context, key string, scores ScoreRange) (int64, error) {
	reply, err := c.cache.SortedSetCount(ctx, &cachev1.SortedSetCountRequest{Key: key, Range: scores.proto()})
	return reply.GetCount(), wrap(err)
}

// SortedSetScore answers the score of each member in order, nil when absent.
func (c *Client) SortedSetScore(ctx context.Context, key string, members ...[]byte) ([]*float64, error) {
	reply, err := c.cache.SortedSetScore(ctx, &cachev1.SortedSetScoreRequest{Key: key, Members: members})
	if err != nil {
		return nil, wrap(err)
	}
	scores := make([]*float64, len(reply.GetScores()))
	for i, s := range reply.GetScores() {
		if s.GetFound() {
			score := s.GetScore()
			scores[i] = &score
		}
	}
	return scores, nil
}

// SortedSetRemove removes members; answers how many were there.
func (c *Client) SortedSetRemove(ctx context.Context, key string, members ...[]byte) (int64, error) {
	reply, err := c.cache.SortedSetRemove(ctx, &cachev1.SortedSetRemoveRequest{Key: key, Members: members})
	return reply.GetRemoved(), wrap(err)
}

// SortedSetRemoveByRank removes members ranked start..end ascending; answers how many.
func (c *Client) SortedSetRemoveByRank(ctx context.Context, key string, start, end int64) (int64, error) {
	reply, err := c.cache.SortedSetRemoveRange(ctx, &cachev1.SortedSetRemoveRangeRequest{
		Key: key, Range: &cachev1.SortedSetRemoveRangeRequest_ByRank{ByRank: &cachev1.IndexRange{Start: start, End: end}},
	})
	return reply.GetRemoved(), wrap(err)
}

// SortedSetRemoveByScore removes members within scores; answers how many.
func (c *Client) SortedSetRemoveByScore(ctx context.Context, key string, scores ScoreRange) (int64, error) {
	reply, err := c.cache.SortedSetRemoveRange(ctx, &cachev1.SortedSetRemoveRangeRequest{
		Key: key, Range: &cachev1.SortedSetRemoveRangeRequest_ByScore{ByScore: scores.proto()},
	})
	return reply.GetRemoved(), wrap(err)
}

// SortedSetCardinality counts the members.
func (c *Client) SortedSetCardinality(ctx context.Context, key string) (int64, error) {
	reply, err := c.cache.SortedSetCardinality(ctx, &cachev1.SortedSetCardinalityRequest{Key: key})
	return reply.GetCardinality(), wrap(err)
}

// SetBit sets (or clears) the bit at offset; answers its previous value. ttl applies
// to a value it creates (0: the default).
func (c *Client) SetBit(ctx context.Context, key string, offset uint64, value bool, ttl time.Duration) (bool, error) {
	reply, err := c.cache.SetBit(ctx, &cachev1.SetBitRequest{Key: key, Offset: offset, Value: value, Ttl: optionalDuration(ttl)})
	return reply.GetPrevious(), wrap(err)
}

// GetBit reads the bit at offset (past the end: false).
func (c *Client) GetBit(ctx context.Context, key string, offset uint64) (bool, error) {
	reply, err := c.cache.GetBit(ctx, &cachev1.GetBitRequest{Key: key, Offset: offset})
	return reply.GetValue(), wrap(err)
}

// BitCount counts the set bits of the whole value.
func (c *Client) BitCount(ctx context.Context, key string) (int64, error) {
	reply, err := c.cache.BitCount(ctx, &cachev1.BitCountRequest{Key: key})
	return reply.GetCount(), wrap(err)
}
