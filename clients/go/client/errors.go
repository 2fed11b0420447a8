package client

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// Calls answer plain gRPC status errors: status.Code(err) gives the code, and these
// helpers read the google.rpc details cachet attaches (see the main README's error table).

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
