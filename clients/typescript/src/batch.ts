// CacheService/Batch and CacheService/Session: many independent operations per call.
// Batch is a builder for a known set of operations; Session keeps one bidirectional
// stream for a hot client; Batcher coalesces concurrent independent callers into Batch
// calls. Each operation answers what its unary wrapper would: the value, or the same
// error (errors.ts `operationError`), and one failing never hides the others.
import { Metadata, status, type ClientDuplexStream, type StatusObject } from "@grpc/grpc-js";
import { CancelledError, DeadlineExceededError, PermissionDeniedError, toCachetError, UnavailableError } from "./errors";
import {
  type BatchOperation,
  type BatchResponse,
  type BatchResult,
  CacheServiceService as Cache,
  type SessionOperation,
  type SessionRequest,
  type SessionResponse,
} from "./gen/cachet/cache/v1/cache";
import { type HashSetOptions, type Operation, type OperationResult, operations, settle } from "./operations";
import { type CallOptions, mayRetry, RETRY_POLICY, retryBackoffMs, type Transport } from "./transport";
import type { Bytes, IncrementOptions, SetOptions, Value } from "./cache";

export type { OperationFailure, OperationResult } from "./operations";

/** A set's options in a Batch, Session or Batcher: those of `set` but tags (refused there: use `set`). */
export type BatchSetOptions = Omit<SetOptions, "tags" | keyof CallOptions>;

const CACHE_SERVICE = "cachet.cache.v1.CacheService";

/**
 * The most bytes of operations one message packs, roughly (`roughBytes`), a Session
 * message or a Batch call: a lone operation may be bigger (the server takes or refuses
 * it). Packing pays for small operations; at a MiB a message's own cost is lost in its
 * payload, and a server's max_message_bytes (default 8 MiB), which refuses a message
 * over it whatever it carries, takes packed what it takes alone.
 */
const PACK_BYTES = 1024 * 1024;

/** An operation's encoded size, from above: its key, keys, fields and values, and what framing and flags may add. */
function roughBytes(operation: BatchOperation): number {
  const text = (s: string) => 3 * s.length + 8; // UTF-8 takes at most 3 bytes per UTF-16 unit; 8 for tag and length
  const { get, set, delete: deleted, increment, expire, hashGet, hashSet } = operation;
  const keyed = get ?? set ?? increment ?? expire ?? hashGet ?? hashSet;
  let bytes = 64 + (keyed === undefined ? 0 : text(keyed.key)) + (set?.value.length ?? 0);
  for (const key of deleted?.keys ?? []) bytes += text(key);
  for (const field of hashGet?.fields ?? []) bytes += text(field);
  for (const { field, value } of hashSet?.fields ?? []) bytes += text(field) + value.length + 8;
  return bytes;
}

/**
 * Where the Batch call that carries `planned` from `start` ends: at most `maxBatch`
 * operations and PACK_BYTES of them (one bigger goes alone), so a batch of big values
 * is not one request over the server's message size that fails as a whole.
 */
function chunkEnd(planned: readonly { operation: BatchOperation }[], start: number, maxBatch: number): number {
  let end = start;
  for (let bytes = 0; end < planned.length && end - start < maxBatch; end++) {
    bytes += roughBytes(planned[end]!.operation);
    if (end > start && bytes > PACK_BYTES) break;
  }
  return end;
}

/**
 * One Batch call carrying `planned`. Retried on UNAVAILABLE as their unary calls are,
 * within the call's deadline, when every one of them may be (none is a set or a
 * hashSet; increments carry request ids, so a retry applies them once).
 */
async function exchange(transport: Transport, planned: Pick<Operation<unknown>, "method" | "operation">[], options: CallOptions): Promise<BatchResponse> {
  const request = { operations: planned.map((p) => p.operation) };
  const retries = transport.retry && planned.every((p) => mayRetry(CACHE_SERVICE, p.method));
  const deadline = Date.now() + (options.timeoutMs ?? transport.timeoutMs);
  for (let attempt = 1; ; attempt++) {
    try {
      return await transport.unary(Cache.batch, request, { signal: options.signal, timeoutMs: deadline - Date.now() });
    } catch (error) {
      const waitMs = retryBackoffMs(attempt);
      const again = retries && attempt < RETRY_POLICY.maxAttempts && error instanceof UnavailableError && Date.now() + waitMs < deadline;
      if (!again) throw error;
      await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }
}

/** The results `execute` resolves to: one per operation, in order. */
export type BatchResults<Results extends unknown[]> = { [I in keyof Results]: OperationResult<Results[I]> };

/**
 * Operations sent together in Batch calls: `client.batch().get("a").set("b", "x").execute()`.
 * Chained, the results are typed per operation; built in a loop, name the result type:
 * `client.batch<(Value | undefined)[]>()`. Past the client's `maxBatch` operations, or
 * about a MiB of them, it sends several calls at once; the results stay in order.
 */
export class Batch<Results extends unknown[] = []> {
  private readonly planned: Operation<unknown>[] = [];
  private executed = false;

  constructor(private readonly transport: Transport) {}

  /** How many operations it holds. */
  get length(): number {
    return this.planned.length;
  }

  get(key: string): Batch<[...Results, Value | undefined]> {
    return this.add(operations.get(key));
  }

  set(key: string, value: Bytes, options: BatchSetOptions = {}): Batch<[...Results, bigint]> {
    return this.add(operations.set(key, value, options));
  }

  delete(keys: string | string[]): Batch<[...Results, number]> {
    return this.add(operations.delete(keys));
  }

  increment(key: string, by: number | bigint = 1, options: { ttlMs?: number } = {}): Batch<[...Results, bigint]> {
    return this.add(operations.increment(key, by, options));
  }

  incrementFloat(key: string, by: number, options: { ttlMs?: number } = {}): Batch<[...Results, number]> {
    return this.add(operations.incrementFloat(key, by, options));
  }

  expire(key: string, ttlMs: number): Batch<[...Results, boolean]> {
    return this.add(operations.expire(key, ttlMs));
  }

  hashGet(key: string, fields: string[]): Batch<[...Results, (Buffer | undefined)[]]> {
    return this.add(operations.hashGet(key, fields));
  }

  hashSet(key: string, fields: Record<string, Bytes>, options: Omit<HashSetOptions, keyof CallOptions> = {}): Batch<[...Results, number]> {
    return this.add(operations.hashSet(key, fields, options));
  }

  /**
   * Sends the operations and resolves to one result per operation, in order: its
   * value, or the error the unary call would have rejected with. Rejects, as a unary
   * call does, only when a Batch call itself fails (UNAVAILABLE, deadline, ...); with
   * several calls the others may have applied. Retried as the unary calls are when every
   * operation may be (no set, no hashSet). A Batch executes once.
   */
  async execute(options: CallOptions = {}): Promise<BatchResults<Results>> {
    if (this.executed) {
      throw new Error("cachet: a Batch executes once; build another");
    }
    this.executed = true;
    const chunks: Operation<unknown>[][] = [];
    for (let start = 0, end = 0; start < this.planned.length; start = end) {
      end = chunkEnd(this.planned, start, this.transport.maxBatch);
      chunks.push(this.planned.slice(start, end));
    }
    const replies = await Promise.all(chunks.map((chunk) => exchange(this.transport, chunk, options)));
    return replies.flatMap((reply, c) => chunks[c]!.map((o, i) => settle(o, reply.results[i]))) as BatchResults<Results>;
  }

  private add<T>(operation: Operation<T>): Batch<[...Results, T]> {
    this.planned.push(operation);
    return this as unknown as Batch<[...Results, T]>;
  }
}

/** One caller's operation until it settles: by its result, its deadline, its signal, or its call failing. */
interface Waiting {
  readonly method: string;
  readonly operation: BatchOperation;
  /** When its deadline passes (epoch milliseconds). */
  readonly deadline: number;
  readonly settled: boolean;
  answer(result: BatchResult | undefined): void;
  fail(error: unknown): void;
}

function wait<T>(operation: Operation<T>, options: CallOptions, defaultTimeoutMs: number, done: () => void = () => {}) {
  const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
  const { signal } = options;
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const onAbort = () =>
    waiting.fail(new CancelledError(status.CANCELLED, "the operation was aborted", new Metadata(), undefined, signal?.reason));
  const timer = setTimeout(
    () => waiting.fail(new DeadlineExceededError(status.DEADLINE_EXCEEDED, `no answer within the ${timeoutMs} ms deadline`)),
    timeoutMs,
  );
  const finish = () => {
    waiting.settled = true;
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
    done();
  };
  const waiting = {
    method: operation.method,
    operation: operation.operation,
    deadline: Date.now() + timeoutMs,
    settled: false,
    answer(result: BatchResult | undefined) {
      if (waiting.settled) return;
      finish();
      const outcome = settle(operation, result);
      if (outcome.status === "fulfilled") resolve(outcome.value);
      else reject(outcome.reason);
    },
    fail(error: unknown) {
      if (waiting.settled) return;
      finish();
      reject(toCachetError(error));
    },
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener("abort", onAbort, { once: true });
  return { waiting: waiting as Waiting, promise };
}

/**
 * The calls a Session and a Batcher carry, with the arguments and answers of the unary
 * wrappers of the same name; each call's `timeoutMs` (default: the client's) and
 * `signal` end that call only.
 */
export abstract class BatchableCalls {
  protected abstract run<T>(operation: Operation<T>, options?: CallOptions): Promise<T>;

  get(key: string, options?: CallOptions): Promise<Value | undefined> {
    return this.run(operations.get(key), options);
  }

  set(key: string, value: Bytes, options: BatchSetOptions & CallOptions = {}): Promise<bigint> {
    return this.run(operations.set(key, value, options), options);
  }

  delete(keys: string | string[], options?: CallOptions): Promise<number> {
    return this.run(operations.delete(keys), options);
  }

  increment(key: string, by: number | bigint = 1, options: IncrementOptions = {}): Promise<bigint> {
    return this.run(operations.increment(key, by, options), options);
  }

  incrementFloat(key: string, by: number, options: IncrementOptions = {}): Promise<number> {
    return this.run(operations.incrementFloat(key, by, options), options);
  }

  expire(key: string, ttlMs: number, options?: CallOptions): Promise<boolean> {
    return this.run(operations.expire(key, ttlMs), options);
  }

  hashGet(key: string, fields: string[], options?: CallOptions): Promise<(Buffer | undefined)[]> {
    return this.run(operations.hashGet(key, fields), options);
  }

  hashSet(key: string, fields: Record<string, Bytes>, options: HashSetOptions & CallOptions = {}): Promise<number> {
    return this.run(operations.hashSet(key, fields, options), options);
  }
}

export interface SessionOptions {
  /** Aborting it closes the session at once: its outstanding operations reject with CancelledError. */
  signal?: AbortSignal;
}

type SessionStream = ClientDuplexStream<SessionRequest, SessionResponse>;

/** How long `close` waits, once every answer is in, for the server to end the stream before cancelling it. */
const CLOSE_GRACE_MS = 1000;

/**
 * The most operations a Session packs into one message: the most a server takes in one
 * (256, whatever its max_batch; past it each is refused), and as many as it holds of one
 * stream before it stops reading. The client's `maxBatch`, when lower, caps it too.
 */
const SESSION_PACK = 256;

/**
 * One CacheService/Session stream: each operation gets a fresh id and resolves when its
 * answer arrives, in any order; any number may be outstanding (the server runs 256 of
 * one stream at once, and reads on as they complete). Operations made together (in one
 * turn of the event loop, or while the previous message is being written) go out packed
 * in one message, up to 256 or about a MiB; a lone one goes out at once, alone. The
 * stream opens with the first operation; when it breaks (server gone, connection lost),
 * every outstanding operation rejects with the mapped error (UnavailableError, ...) and
 * the next one opens a new stream. Not retried: an operation that rejected may have
 * applied.
 */
export class Session extends BatchableCalls {
  private stream: SessionStream | undefined;
  private readonly pending = new Map<bigint, { waiting: Waiting; stream: SessionStream }>();
  private nextId = 0n;
  /** The ids of the operations made and not yet written, oldest first. */
  private unsent: bigint[] = [];
  /** The stream with a message scheduled or being written: operations made meanwhile wait for the next one. */
  private sendingOn: SessionStream | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private drained: (() => void) | undefined;

  constructor(
    private readonly transport: Transport,
    private readonly options: SessionOptions = {},
  ) {
    super();
    options.signal?.addEventListener("abort", () => this.abort(), { once: true });
  }

  /** How many operations await their answer. */
  get outstanding(): number {
    return this.pending.size;
  }

  protected run<T>(operation: Operation<T>, options: CallOptions = {}): Promise<T> {
    if (this.closed || this.options.signal?.aborted) {
      return Promise.reject(new CancelledError(status.CANCELLED, "the session is closed"));
    }
    const id = ++this.nextId;
    const { waiting, promise } = wait(operation, options, this.transport.timeoutMs, () => {
      this.pending.delete(id);
      if (this.pending.size === 0) this.drained?.();
    });
    if (!waiting.settled) {
      const stream = this.open();
      this.pending.set(id, { waiting, stream });
      this.unsent.push(id);
      if (this.sendingOn !== stream) {
        this.sendingOn = stream;
        // After the code that made it: the operations made with it share its message.
        queueMicrotask(() => this.send(stream));
      }
    }
    return promise;
  }

  /** Writes the next message of `stream`, and the one after once it is written, until none is left. */
  private send(stream: SessionStream): void {
    const message = this.nextMessage(stream);
    if (message === undefined) {
      if (this.sendingOn === stream) this.sendingOn = undefined;
      return;
    }
    stream.write(message, () => this.send(stream));
  }

  /**
   * The unsent operations of `stream`, oldest first, up to SESSION_PACK and
   * PACK_BYTES, as one message (a lone one in `id` and `operation`); those
   * settled meanwhile (deadline, signal) are never sent.
   */
  private nextMessage(stream: SessionStream): SessionRequest | undefined {
    const limit = Math.min(SESSION_PACK, this.transport.maxBatch);
    const packed: SessionOperation[] = [];
    let bytes = 0;
    let taken = 0;
    for (; taken < this.unsent.length && packed.length < limit; taken++) {
      const id = this.unsent[taken]!;
      const entry = this.pending.get(id);
      if (entry?.stream !== stream) continue;
      const size = roughBytes(entry.waiting.operation);
      if (packed.length > 0 && bytes + size > PACK_BYTES) break;
      bytes += size;
      packed.push({ id, operation: entry.waiting.operation });
    }
    this.unsent.splice(0, taken);
    if (packed.length === 0) return undefined;
    if (packed.length === 1) return { id: packed[0]!.id, operation: packed[0]!.operation, operations: [] };
    return { id: 0n, operation: undefined, operations: packed };
  }

  /** Half-closes the stream and resolves once every outstanding operation has settled. */
  close(): Promise<void> {
    this.closed = true;
    this.closing ??= this.finish();
    return this.closing;
  }

  private async finish(): Promise<void> {
    const stream = this.stream;
    if (stream === undefined) return;
    let finished = false;
    const ended = new Promise<void>((resolve) => stream.once("status", () => resolve())).then(() => {
      finished = true;
    });
    // What is still unsent goes out before the half-close.
    for (let message = this.nextMessage(stream); message !== undefined; message = this.nextMessage(stream)) {
      stream.write(message);
    }
    stream.end();
    if (this.pending.size > 0) {
      await new Promise<void>((resolve) => (this.drained = resolve));
    }
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([ended, new Promise<void>((resolve) => (grace = setTimeout(resolve, CLOSE_GRACE_MS)))]);
    clearTimeout(grace);
    if (!finished) stream.cancel();
  }

  private open(): SessionStream {
    if (this.stream !== undefined) return this.stream;
    const stream = this.transport.duplex(Cache.session);
    stream.on("data", (response: SessionResponse) => {
      for (const answer of response.answers) this.pending.get(answer.id)?.waiting.answer(answer.result);
      // A packed message carries no answer of its own.
      if (response.answers.length === 0 || response.result !== undefined) {
        this.pending.get(response.id)?.waiting.answer(response.result);
      }
    });
    stream.on("error", (error: unknown) => this.broken(stream, error));
    stream.on("status", (end: StatusObject) => {
      if (end.code === status.OK) {
        this.broken(stream, new UnavailableError(status.UNAVAILABLE, "the Session stream ended before answering every operation"));
      }
    });
    this.stream = stream;
    return stream;
  }

  /** Fails the operations sent on `stream`; the next operation opens a new stream. */
  private broken(stream: SessionStream, error: unknown): void {
    if (this.stream === stream) this.stream = undefined;
    for (const { waiting, stream: sentOn } of [...this.pending.values()]) {
      if (sentOn === stream) waiting.fail(error);
    }
  }

  private abort(): void {
    this.closed = true;
    const reason = this.options.signal?.reason;
    const error = new CancelledError(status.CANCELLED, "the session was aborted", new Metadata(), undefined, reason);
    for (const { waiting } of [...this.pending.values()]) waiting.fail(error);
    this.stream?.cancel();
  }
}

export interface BatcherOptions {
  /**
   * Batch calls out at once (default 4). Below it, a call goes out with the others of
   * its event-loop turn; at it, calls queue and go out together, up to the client's
   * `maxBatch` (and about a MiB) per call, as soon as one returns.
   */
  maxInFlight?: number;
}

/** Whether an operation writes (everything but get and hashGet). */
function writes(operation: BatchOperation): boolean {
  return operation.get === undefined && operation.hashGet === undefined;
}

/**
 * The batchable calls, coalesced adaptively into Batch calls: the calls made in one
 * turn of the event loop go out together (so `Promise.all` of 50 gets is one Batch,
 * and a lone caller waits for nothing), and while `maxInFlight` Batch calls are out the
 * calls made meanwhile queue and go out together when one returns; a Batch call
 * carries up to the client's `maxBatch` and about a MiB of them. Each caller gets
 * its own value or its own error; a Batch call failing (UNAVAILABLE, deadline) rejects
 * each of its callers with that error, after the retries its operations allow (see
 * Batch.execute). A call's `timeoutMs` counts from when it is made.
 */
export class Batcher extends BatchableCalls {
  readonly maxInFlight: number;
  private queue: Waiting[] = [];
  private inFlight = 0;
  private flushScheduled = false;

  constructor(
    private readonly transport: Transport,
    options: BatcherOptions = {},
  ) {
    super();
    this.maxInFlight = options.maxInFlight ?? 4;
    if (!Number.isInteger(this.maxInFlight) || this.maxInFlight < 1) {
      throw new Error(`cachet: maxInFlight must be a positive integer, not ${this.maxInFlight}`);
    }
  }

  protected run<T>(operation: Operation<T>, options: CallOptions = {}): Promise<T> {
    const { waiting, promise } = wait(operation, options, this.transport.timeoutMs);
    if (!waiting.settled) {
      this.queue.push(waiting);
      this.schedule();
    }
    return promise;
  }

  private schedule(): void {
    if (this.flushScheduled || this.inFlight >= this.maxInFlight) return;
    this.flushScheduled = true;
    // After this turn's callbacks (I/O included): their calls join the same Batch.
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    while (this.inFlight < this.maxInFlight) {
      this.queue = this.queue.filter((waiting) => !waiting.settled);
      if (this.queue.length === 0) return;
      this.send(this.queue.splice(0, chunkEnd(this.queue, 0, this.transport.maxBatch)));
    }
  }

  private send(chunk: Waiting[]): void {
    this.inFlight++;
    const timeoutMs = Math.max(1, chunk.reduce((latest, w) => Math.max(latest, w.deadline), 0) - Date.now());
    exchange(this.transport, chunk, { timeoutMs })
      .then(
        (reply) => chunk.forEach((waiting, i) => waiting.answer(reply.results[i])),
        (error: unknown) => {
          // The server needs the write role for a whole Batch that holds a write: a
          // read-only credential's reads must not fail because another caller's write
          // shared their Batch. The writes keep the refusal; the reads go again alone.
          const reads = chunk.filter((waiting) => !writes(waiting.operation));
          if (error instanceof PermissionDeniedError && reads.length > 0 && reads.length < chunk.length) {
            chunk.filter((waiting) => writes(waiting.operation)).forEach((waiting) => waiting.fail(error));
            this.send(reads);
          } else {
            chunk.forEach((waiting) => waiting.fail(error));
          }
        },
      )
      .finally(() => {
        this.inFlight--;
        this.flush();
      });
  }
}
