package client

import (
	"context"
	"time"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// Txn is an etcd-style transaction: comparisons, then the Then operations if all
// hold, else the Else ones, atomically. All keys must share a Redis Cluster slot
// (a common hash tag, `{acct}:alice`), else ErrCrossSlot on every topology.
//
//	result, err := c.Txn().
//		If(client.VersionIs("{acct}:alice", v)).
//		Then(client.TxnSet("{acct}:alice", []byte("90"), 0), client.TxnIncrement("{acct}:log", 1, 0)).
//		Commit(ctx)
type Txn struct {
	client  *Client
	request cachev1.TxnRequest
}

// Txn starts a transaction.
func (c *Client) Txn() *Txn { return &Txn{client: c} }

// If adds comparisons that must all hold for Then to run.
func (t *Txn) If(compares ...*cachev1.Compare) *Txn {
	t.request.Compare = append(t.request.Compare, compares...)
	return t
}

// Then adds operations run when every comparison holds.
func (t *Txn) Then(ops ...*cachev1.TxnOp) *Txn {
	t.request.Success = append(t.request.Success, ops...)
	return t
}

// Else adds operations run when a comparison fails.
func (t *Txn) Else(ops ...*cachev1.TxnOp) *Txn {
	t.request.Failure = append(t.request.Failure, ops...)
	return t
}

// TxnResult tells which branch ran and has one result per operation of it.
type TxnResult struct {
	Succeeded bool
	Results   []*cachev1.TxnOpResult
}

// Commit runs the transaction.
func (t *Txn) Commit(ctx context.Context) (*TxnResult, error) {
	reply, err := t.client.cache.Txn(ctx, &t.request)
	if err != nil {
		return nil, wrap(err)
	}
	return &TxnResult{Succeeded: reply.GetSucceeded(), Results: reply.GetResults()}, nil
}

// Comparison operators for the Compare* constructors.
const (
	Equal          = cachev1.CompareOperator_COMPARE_OPERATOR_EQUAL
	NotEqual       = cachev1.CompareOperator_COMPARE_OPERATOR_NOT_EQUAL
	Greater        = cachev1.CompareOperator_COMPARE_OPERATOR_GREATER
	Less           = cachev1.CompareOperator_COMPARE_OPERATOR_LESS
	GreaterOrEqual = cachev1.CompareOperator_COMPARE_OPERATOR_GREATER_OR_EQUAL
	LessOrEqual    = cachev1.CompareOperator_COMPARE_OPERATOR_LESS_OR_EQUAL
)

// KeyExists holds when key exists (exists false: when it does not).
func KeyExists(key string, exists bool) *cachev1.Compare {
	return &cachev1.Compare{Key: key, Operator: Equal, Target: &cachev1.Compare_Exists{Exists: exists}}
}

// ValueIs holds when key's value is value, byte for byte.
func ValueIs(key string, value []byte) *cachev1.Compare {
	return &cachev1.Compare{Key: key, Operator: Equal, Target: &cachev1.Compare_Value{Value: value}}
}

// VersionIs holds when key's version is version (0: the key is absent).
func VersionIs(key string, version uint64) *cachev1.Compare {
	return CompareVersion(key, Equal, version)
}

// CompareVersion compares key's version with version.
func CompareVersion(key string, op cachev1.CompareOperator, version uint64) *cachev1.Compare {
	return &cachev1.Compare{Key: key, Operator: op, Target: &cachev1.Compare_Version{Version: version}}
}

// CompareNumber compares key's value read as a number (absent: 0) with number.
func CompareNumber(key string, op cachev1.CompareOperator, number float64) *cachev1.Compare {
	return &cachev1.Compare{Key: key, Operator: op, Target: &cachev1.Compare_Number{Number: number}}
}

// CompareTTL compares key's remaining TTL (absent: -2ms, none: -1ms) with ttl.
func CompareTTL(key string, op cachev1.CompareOperator, ttl time.Duration) *cachev1.Compare {
	return &cachev1.Compare{Key: key, Operator: op, Target: &cachev1.Compare_TtlMs{TtlMs: ttl.Milliseconds()}}
}

// TxnSet writes value (ttl 0: the server's default).
func TxnSet(key string, value []byte, ttl time.Duration) *cachev1.TxnOp {
	return &cachev1.TxnOp{Op: &cachev1.TxnOp_Set{Set: &cachev1.TxnSet{Key: key, Value: value, Ttl: optionalDuration(ttl)}}}
}

// TxnDelete deletes key.
func TxnDelete(key string) *cachev1.TxnOp {
	return &cachev1.TxnOp{Op: &cachev1.TxnOp_Delete{Delete: &cachev1.TxnDelete{Key: key}}}
}

// TxnIncrement adds by to a counter (ttl for a counter it creates; 0: the default).
func TxnIncrement(key string, by int64, ttl time.Duration) *cachev1.TxnOp {
	return &cachev1.TxnOp{Op: &cachev1.TxnOp_Increment{Increment: &cachev1.TxnIncrement{Key: key, ByInt: by, Ttl: optionalDuration(ttl)}}}
}

// TxnGet reads key.
func TxnGet(key string) *cachev1.TxnOp {
	return &cachev1.TxnOp{Op: &cachev1.TxnOp_Get{Get: &cachev1.TxnGet{Key: key}}}
}
