package client

import (
	"context"

	adminv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/admin/v1"
)

// Admin is AdminService, the operator's console; with auth on, every call needs the
// admin role (ErrRoleNotGranted). Listings that page take the generated request
// (nil: the first page with defaults) and answer the page with its next token.
type Admin struct {
	stub      adminv1.AdminServiceClient
	namespace string
}

// ServerInfo reports the cachet process and every Redis node.
func (a *Admin) ServerInfo(ctx context.Context) (*adminv1.GetServerInfoResponse, error) {
	reply, err := a.stub.GetServerInfo(ctx, &adminv1.GetServerInfoRequest{})
	return reply, wrap(err)
}

// ServiceStats reports this process's hits, misses and calls (one page).
func (a *Admin) ServiceStats(ctx context.Context, request *adminv1.GetServiceStatsRequest) (*adminv1.GetServiceStatsResponse, error) {
	reply, err := a.stub.GetServiceStats(ctx, orEmpty(request))
	return reply, wrap(err)
}

// SlowLog lists Redis slow log entries, newest first (one page).
func (a *Admin) SlowLog(ctx context.Context, request *adminv1.GetSlowLogRequest) (*adminv1.GetSlowLogResponse, error) {
	reply, err := a.stub.GetSlowLog(ctx, orEmpty(request))
	return reply, wrap(err)
}

// ResetSlowLog empties the slow log of every node; answers how many were reset.
func (a *Admin) ResetSlowLog(ctx context.Context) (int64, error) {
	reply, err := a.stub.ResetSlowLog(ctx, &adminv1.ResetSlowLogRequest{})
	return reply.GetNodesReset(), wrap(err)
}

// MemoryStats reports MEMORY STATS and MEMORY DOCTOR of every node.
func (a *Admin) MemoryStats(ctx context.Context) ([]*adminv1.NodeMemoryStats, error) {
	reply, err := a.stub.GetMemoryStats(ctx, &adminv1.GetMemoryStatsRequest{})
	return reply.GetNodes(), wrap(err)
}

// KeyMemoryUsage is the memory a cache key takes; found is false when it is absent.
func (a *Admin) KeyMemoryUsage(ctx context.Context, key string) (bytes int64, found bool, err error) {
	reply, err := a.stub.GetKeyMemoryUsage(ctx, &adminv1.GetKeyMemoryUsageRequest{Key: key})
	return reply.GetBytes(), reply.GetFound(), wrap(err)
}

// ScanKeys lists every cache key of the namespace matching the glob pattern, all
// pages (a key may repeat if Redis resizes during the scan).
func (a *Admin) ScanKeys(ctx context.Context, pattern string) ([]string, error) {
	var keys []string
	request := &adminv1.ScanKeysRequest{Pattern: pattern}
	for {
		reply, err := a.stub.ScanKeys(ctx, request)
		if err != nil {
			return nil, wrap(err)
		}
		keys = append(keys, reply.GetKeys()...)
		if request.PageToken = reply.GetNextPageToken(); request.PageToken == "" {
			return keys, nil
		}
	}
}

// InspectKey describes one cache key (type, TTL, size, memory, version, ...).
func (a *Admin) InspectKey(ctx context.Context, key string) (*adminv1.InspectKeyResponse, error) {
	reply, err := a.stub.InspectKey(ctx, &adminv1.InspectKeyRequest{Key: key})
	return reply, wrap(err)
}

// BigKeys reports the namespace's biggest keys from a bounded scan (one page).
func (a *Admin) BigKeys(ctx context.Context, request *adminv1.GetBigKeysRequest) (*adminv1.GetBigKeysResponse, error) {
	reply, err := a.stub.GetBigKeys(ctx, orEmpty(request))
	return reply, wrap(err)
}

// Clients lists the Redis connections of every node (one page).
func (a *Admin) Clients(ctx context.Context, request *adminv1.ListClientsRequest) (*adminv1.ListClientsResponse, error) {
	reply, err := a.stub.ListClients(ctx, orEmpty(request))
	return reply, wrap(err)
}

// Config reads whitelisted Redis parameters on every node (no names: every
// whitelisted one); the answer also lists the whitelist.
func (a *Admin) Config(ctx context.Context, names ...string) (*adminv1.GetConfigResponse, error) {
	reply, err := a.stub.GetConfig(ctx, &adminv1.GetConfigRequest{Names: names})
	return reply, wrap(err)
}

// SetConfig sets whitelisted Redis parameters on every node; answers the nodes.
func (a *Admin) SetConfig(ctx context.Context, parameters map[string]string) ([]string, error) {
	reply, err := a.stub.SetConfig(ctx, &adminv1.SetConfigRequest{Parameters: parameters})
	return reply.GetNodes(), wrap(err)
}

// FlushNamespace deletes every key of the client's namespace; confirm must repeat the
// namespace's name (ErrConfirmationFailed otherwise). dryRun only counts.
func (a *Admin) FlushNamespace(ctx context.Context, confirm string, dryRun bool) (int64, error) {
	reply, err := a.stub.FlushNamespace(ctx, &adminv1.FlushNamespaceRequest{Confirm: confirm, DryRun: dryRun})
	return reply.GetDeletedKeys(), wrap(err)
}

// Namespace is the namespace the admin calls scoped to a namespace act on.
func (a *Admin) Namespace() string { return a.namespace }

func orEmpty[T any](request *T) *T {
	if request == nil {
		return new(T)
	}
	return request
}
