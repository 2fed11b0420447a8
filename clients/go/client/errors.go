package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed cachet call: the gRPC status and the google.rpc details cachet
// attaches (the main README's error table lists codes and reasons). Every wrapper
// method answers its failures as *Error; AsError converts an error of a raw stub.
//
//	var cerr *client.Error
//	if errors.As(err, &cerr) && cerr.Reason == "VERSION_MISMATCH" { ... }
//	if errors.Is(err, client.ErrVersionMismatch) { ... } // the same check
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the google.rpc.ErrorInfo reason ("LOCK_HELD"), or "".
	Reason string
	// Message is the status message.
	Message string
	// Metadata is the google.rpc.ErrorInfo metadata (e.g. current_version).
	Metadata map[string]string
	// FieldViolations are the google.rpc.BadRequest fields of INVALID_ARGUMENT.
	FieldViolations []*errdetails.BadRequest_FieldViolation
	// RetryAfter is the google.rpc.RetryInfo delay (rate limited, overloaded), or 0.
	RetryAfter time.Duration

	status *status.Status
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("cachet: %s %s: %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("cachet: %s: %s", e.Code, e.Message)
}

// GRPCStatus keeps status.Code, status.FromError and the detail helpers working.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// Is matches the sentinels below (on the fields they set), and context.Canceled /
// context.DeadlineExceeded for calls that ended that way.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	case ErrRateLimited:
		return e.Code == codes.ResourceExhausted && e.RetryAfter > 0
	}
	sentinel, ok := target.(*Error)
	if !ok || sentinel.status != nil || (sentinel.Code == codes.OK && sentinel.Reason == "") {
		return false
	}
	return (sentinel.Code == codes.OK || sentinel.Code == e.Code) &&
		(sentinel.Reason == "" || sentinel.Reason == e.Reason)
}

// Sentinels for errors.Is. Reason sentinels match on the ErrorInfo reason alone.
var (
	ErrInvalidArgument     = &Error{Code: codes.InvalidArgument}
	ErrUnavailable         = &Error{Code: codes.Unavailable}
	ErrUnauthenticated     = &Error{Code: codes.Unauthenticated}
	ErrPermissionDenied    = &Error{Code: codes.PermissionDenied}
	ErrKeyExists           = &Error{Reason: "KEY_EXISTS"}
	ErrKeyNotFound         = &Error{Reason: "KEY_NOT_FOUND"}
	ErrWrongType           = &Error{Reason: "WRONG_TYPE"}
	ErrNotANumber          = &Error{Reason: "NOT_A_NUMBER"}
	ErrCrossSlot           = &Error{Reason: "CROSS_SLOT"}
	ErrVersionMismatch     = &Error{Reason: "VERSION_MISMATCH"}
	ErrFencingTokenStale   = &Error{Reason: "FENCING_TOKEN_STALE"}
	ErrLeaseLost           = &Error{Reason: "LEASE_LOST"}
	ErrLockHeld            = &Error{Reason: "LOCK_HELD"}
	ErrLockNotOwned        = &Error{Reason: "LOCK_NOT_OWNED"}
	ErrSemaphoreFull       = &Error{Reason: "SEMAPHORE_FULL"}
	ErrGroupNotFound       = &Error{Reason: "GROUP_NOT_FOUND"}
	ErrGroupExists         = &Error{Reason: "GROUP_EXISTS"}
	ErrStreamNotFound      = &Error{Reason: "STREAM_NOT_FOUND"}
	ErrPolicyNotFound      = &Error{Reason: "POLICY_NOT_FOUND"}
	ErrResponseTooLarge    = &Error{Reason: "RESPONSE_TOO_LARGE"}
	ErrSubscriberTooSlow   = &Error{Reason: "SUBSCRIBER_TOO_SLOW"}
	ErrNamespaceNotGranted = &Error{Reason: "NAMESPACE_NOT_GRANTED"}
	ErrRoleNotGranted      = &Error{Reason: "ROLE_NOT_GRANTED"}
	ErrCredentialExpired   = &Error{Reason: "CREDENTIAL_EXPIRED"}
	ErrConfirmationFailed  = &Error{Reason: "CONFIRMATION_MISMATCH"}
	// ErrRateLimited matches RESOURCE_EXHAUSTED that says when to retry (RetryAfter).
	ErrRateLimited = errors.New("cachet: rate limited")
)

// AsError is err as an *Error when it is a gRPC status error, else nil.
func AsError(err error) *Error {
	var cerr *Error
	if errors.As(err, &cerr) {
		return cerr
	}
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return nil
	}
	cerr = &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, d := range st.Details() {
		switch detail := d.(type) {
		case *errdetails.ErrorInfo:
			cerr.Reason, cerr.Metadata = detail.GetReason(), detail.GetMetadata()
		case *errdetails.BadRequest:
			cerr.FieldViolations = detail.GetFieldViolations()
		case *errdetails.RetryInfo:
			cerr.RetryAfter = detail.GetRetryDelay().AsDuration()
		}
	}
	return cerr
}

// wrap turns a call's status error into *Error and leaves any other error alone.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	if cerr := AsError(err); cerr != nil {
		return cerr
	}
	return err
}

// Reason is the google.rpc.ErrorInfo reason of err (e.g. "VERSION_MISMATCH"), or ""
// when err carries none.
func Reason(err error) string {
	if info := ErrorInfo(err); info != nil {
		return info.GetReason()
	}
	return ""
}

// ErrorInfo is the google.rpc.ErrorInfo detail of err, or nil.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	return detail[*errdetails.ErrorInfo](err)
}

// FieldViolations lists the bad request fields of an INVALID_ARGUMENT error.
func FieldViolations(err error) []*errdetails.BadRequest_FieldViolation {
	return detail[*errdetails.BadRequest](err).GetFieldViolations()
}

// RetryInfo is the google.rpc.RetryInfo detail of err (RESOURCE_EXHAUSTED), or nil.
func RetryInfo(err error) *errdetails.RetryInfo {
	return detail[*errdetails.RetryInfo](err)
}

func detail[T any](err error) T {
	var zero T
	st, ok := status.FromError(err)
	if !ok {
		return zero
	}
	for _, d := range st.Details() {
		if typed, ok := d.(T); ok {
			return typed
		}
	}
	return zero
}
