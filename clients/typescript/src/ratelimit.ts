// RateLimitService. A denied check is a decision with `allowed: false`, not an error.
import {
  Algorithm,
  CheckManyMode,
  type CheckResult,
  type Policy,
  type RateLimitTarget,
  RateLimitServiceService as RateLimit,
} from "./gen/cachet/ratelimit/v1/ratelimit";
import { type CallOptions, duration, millis, type Transport } from "./transport";

export { Algorithm };

/** `limit` hits per `periodMs` (token bucket unless `algorithm` says otherwise). */
export interface Limit {
  limit: number;
  periodMs: number;
  algorithm?: Algorithm;
  /** Token bucket capacity or GCRA burst. Default: `limit`. */
  burst?: number;
}

const PERIODS: Record<string, number> = { second: 1000, minute: 60_000, hour: 3_600_000, day: 86_400_000 };

/** A limit written `"10/minute"` (second, minute, hour, day; `"100/5 minutes"` too) as a token bucket. */
export function parseLimit(text: string): Limit {
  const match = /^\s*(\d+)\s*\/\s*(\d+)?\s*(second|minute|hour|day)s?\s*$/.exec(text);
  const unit = match?.[3];
  if (!match || unit === undefined) {
    throw new Error(`cachet: a rate limit is written like "10/minute", not ${JSON.stringify(text)}`);
  }
  return { limit: Number(match[1]), periodMs: Number(match[2] ?? 1) * (PERIODS[unit] ?? 0) };
}

/** What a check limits. */
export const target = {
  /** `key` under a limit given here (`"10/minute"` or a Limit). */
  inline(key: string, limit: Limit | string): RateLimitTarget {
    const l = typeof limit === "string" ? parseLimit(limit) : limit;
    return {
      inlineLimit: {
        key,
        limit: {
          algorithm: l.algorithm ?? Algorithm.ALGORITHM_UNSPECIFIED,
          limit: BigInt(l.limit),
          period: duration(l.periodMs),
          burst: BigInt(l.burst ?? 0),
        },
      },
    };
  },
  /** `key` under the server's named policy (PolicyNotFoundError if none). */
  policy(name: string, key: string): RateLimitTarget {
    return { policy: { name, key } };
  },
  /** Envoy-style descriptor entries matched against the server's rules of `domain`. */
  descriptor(domain: string, entries: Record<string, string>): RateLimitTarget {
    return { descriptorMatch: { domain, entries: Object.entries(entries).map(([key, value]) => ({ key, value })) } };
  },
};

export interface Decision {
  allowed: boolean;
  /** The capacity. */
  limit: bigint;
  /** Hits still admissible after this decision. */
  remaining: bigint;
  /** When denied: milliseconds until the same hits would be admitted (0 when never). */
  retryAfterMs: number;
  /** Milliseconds until the allowance is full again. */
  resetAfterMs: number;
  /** The whole answer (shadow mode, matched policy, fail-open, ...). */
  result: CheckResult;
}

function decision(result: CheckResult | undefined): Decision {
  if (!result) throw new Error("cachet: a check answered no result");
  return {
    allowed: result.allowed,
    limit: result.limit,
    remaining: result.remaining,
    retryAfterMs: millis(result.retryAfter),
    resetAfterMs: millis(result.resetAfter),
    result,
  };
}

export class RateLimits {
  constructor(private readonly transport: Transport) {}

  /** Spends `hits` (default 1) on target, all admitted or none. */
  async check(on: RateLimitTarget, options: CallOptions & { hits?: number } = {}): Promise<Decision> {
    const reply = await this.transport.unary(RateLimit.check, { target: on, hits: BigInt(options.hits ?? 1) }, options);
    return decision(reply.result);
  }

  /** Target's state without spending: `allowed` tells whether one more hit would be admitted now. */
  peek(on: RateLimitTarget, options: CallOptions = {}): Promise<Decision> {
    return this.check(on, { ...options, hits: 0 });
  }

  /** Decides every target (one hit each) in one call; `allOrNothing` admits them together or not at all (one slot). */
  async checkMany(
    targets: RateLimitTarget[],
    options: CallOptions & { allOrNothing?: boolean } = {},
  ): Promise<{ allowed: boolean; decisions: Decision[] }> {
    const request = {
      items: targets.map((t) => ({ target: t, hits: undefined })),
      mode: options.allOrNothing ? CheckManyMode.CHECK_MANY_MODE_ALL_OR_NOTHING : CheckManyMode.CHECK_MANY_MODE_INDEPENDENT,
    };
    const reply = await this.transport.unary(RateLimit.checkMany, request, options);
    return { allowed: reply.allowed, decisions: reply.results.map(decision) };
  }

  /** Clears targets' state; resolves to how many had any. */
  async reset(targets: RateLimitTarget[], options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(RateLimit.reset, { targets }, options)).cleared);
  }

  /** Every named policy of the server (of `domain`; default all), all pages. */
  async policies(domain = "", options?: CallOptions): Promise<Policy[]> {
    const policies: Policy[] = [];
    let pageToken = "";
    do {
      const reply = await this.transport.unary(RateLimit.listPolicies, { domain, pageSize: 0, pageToken }, options);
      policies.push(...reply.policies);
      pageToken = reply.nextPageToken;
    } while (pageToken !== "");
    return policies;
  }
}
