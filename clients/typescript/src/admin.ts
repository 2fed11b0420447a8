// AdminService, the operator's console; with auth on every call needs the admin role
// (PermissionDeniedError, reason ADMIN_ROLE_REQUIRED). Listings that page take the
// generated request's fields (default: the first page) and answer one page.
import {
  AdminServiceService as AdminRpc,
  type GetBigKeysRequest,
  type GetBigKeysResponse,
  type GetConfigResponse,
  type GetServerInfoResponse,
  type GetServiceStatsResponse,
  type GetSlowLogResponse,
  type InspectKeyResponse,
  type ListClientsResponse,
  type NodeMemoryStats,
} from "./gen/cachet/admin/v1/admin";
import type { CallOptions, Transport } from "./transport";

interface Page extends CallOptions {
  pageSize?: number;
  pageToken?: string;
}

export class Admin {
  constructor(private readonly transport: Transport) {}

  /** The namespace the namespace-scoped calls act on. */
  get namespace(): string {
    return this.transport.namespace;
  }

  /** The cachet process and every Redis node. */
  serverInfo(options?: CallOptions): Promise<GetServerInfoResponse> {
    return this.transport.unary(AdminRpc.getServerInfo, {}, options);
  }

  /** This process's hits, misses and calls (one page). */
  serviceStats(options: Page = {}): Promise<GetServiceStatsResponse> {
    return this.transport.unary(AdminRpc.getServiceStats, { pageSize: options.pageSize ?? 0, pageToken: options.pageToken ?? "" }, options);
  }

  /** The Redis slow log, newest first (one page; `node` for one node). */
  slowLog(options: Page & { node?: string } = {}): Promise<GetSlowLogResponse> {
    const request = { pageSize: options.pageSize ?? 0, pageToken: options.pageToken ?? "", node: options.node ?? "" };
    return this.transport.unary(AdminRpc.getSlowLog, request, options);
  }

  /** Empties every node's slow log; resolves to how many nodes. */
  async resetSlowLog(options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(AdminRpc.resetSlowLog, {}, options)).nodesReset);
  }

  /** MEMORY STATS and MEMORY DOCTOR of every node. */
  async memoryStats(options?: CallOptions): Promise<NodeMemoryStats[]> {
    return (await this.transport.unary(AdminRpc.getMemoryStats, {}, options)).nodes;
  }

  /** The memory a cache key takes in bytes; undefined when it is absent. */
  async keyMemoryUsage(key: string, options?: CallOptions): Promise<number | undefined> {
    const reply = await this.transport.unary(AdminRpc.getKeyMemoryUsage, { key, kind: 0, samples: undefined }, options);
    return reply.found ? Number(reply.bytes) : undefined;
  }

  /** Every cache key of the namespace matching the glob, all pages (a key may repeat if Redis resizes meanwhile). */
  async scanKeys(pattern = "*", options?: CallOptions): Promise<string[]> {
    const keys: string[] = [];
    let pageToken = "";
    do {
      const reply = await this.transport.unary(AdminRpc.scanKeys, { pattern, type: 0, kind: 0, pageSize: 0, pageToken }, options);
      keys.push(...reply.keys);
      pageToken = reply.nextPageToken;
    } while (pageToken !== "");
    return keys;
  }

  /** One cache key: type, TTL, size, memory, version, ... */
  inspectKey(key: string, options?: CallOptions): Promise<InspectKeyResponse> {
    return this.transport.unary(AdminRpc.inspectKey, { key, kind: 0 }, options);
  }

  /** The namespace's biggest keys from a bounded scan (one page). */
  bigKeys(request: Partial<GetBigKeysRequest> = {}, options?: CallOptions): Promise<GetBigKeysResponse> {
    const full = { order: 0, pageSize: 0, scanBudget: 0n, type: 0, kind: 0, pattern: "", pageToken: "", ...request };
    return this.transport.unary(AdminRpc.getBigKeys, full, options);
  }

  /** The Redis connections of every node (one page; `node` for one node). */
  clients(options: Page & { node?: string } = {}): Promise<ListClientsResponse> {
    const request = { pageSize: options.pageSize ?? 0, pageToken: options.pageToken ?? "", node: options.node ?? "" };
    return this.transport.unary(AdminRpc.listClients, request, options);
  }

  /** Whitelisted Redis parameters on every node (none named: all whitelisted); also lists the whitelist. */
  config(names: string[] = [], options?: CallOptions): Promise<GetConfigResponse> {
    return this.transport.unary(AdminRpc.getConfig, { names }, options);
  }

  /** Sets whitelisted Redis parameters on every node; resolves to the nodes. */
  async setConfig(parameters: Record<string, string>, options?: CallOptions): Promise<string[]> {
    return (await this.transport.unary(AdminRpc.setConfig, { parameters }, options)).nodes;
  }

  /** Deletes every key of the namespace; `confirm` must repeat its name. `dryRun` only counts. */
  async flushNamespace(confirm: string, options: CallOptions & { dryRun?: boolean } = {}): Promise<number> {
    const reply = await this.transport.unary(AdminRpc.flushNamespace, { confirm, dryRun: options.dryRun ?? false }, options);
    return Number(reply.deletedKeys);
  }
}
