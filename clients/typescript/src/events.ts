// EventBusService: pub/sub (publish, subscribe: at-most-once) and durable streams
// (append, read, consumer groups with consume and ack: at-least-once).
import {
  type Event,
  EventBusServiceService as EventBus,
  type InfoResponse,
  type ListPendingRequest,
  type ListPendingResponse,
  type PendingResponse,
  type TopicMessage,
} from "./gen/cachet/eventbus/v1/eventbus";
import { CachetError } from "./errors";
import { type CallOptions, duration, iterate, requestId, type Transport } from "./transport";

export type { Event, TopicMessage };

/** An event's fields as written (everything optional). */
export interface EventInput {
  id?: string;
  source?: string;
  type?: string;
  time?: Date;
  contentType?: string;
  payload?: Uint8Array | string;
  attributes?: Record<string, string>;
}

function event(input: EventInput): Event {
  return {
    id: input.id ?? "",
    source: input.source ?? "",
    type: input.type ?? "",
    time: input.time,
    contentType: input.contentType ?? "",
    payload: Buffer.from(input.payload ?? ""),
    attributes: input.attributes ?? {},
    deliveryCount: 0n,
    deadLetter: undefined,
  };
}

/** An event delivered to a consumer of a group; it stays pending until acked. */
export interface Delivery {
  event: Event;
  /** Acknowledges the event: it is never delivered to the group again. */
  ack(options?: CallOptions): Promise<void>;
}

export interface ConsumeOptions extends CallOptions {
  /** Events per round. Default: the server's. */
  batchSize?: number;
  /** How long a round waits for new events. Default: the server's. */
  blockMs?: number;
  /** Take over other consumers' events idle this long. */
  autoClaimMinIdleMs?: number;
  /** First deliver this consumer's own unacknowledged events. */
  redeliverPending?: boolean;
  /** Pause delivery while this consumer has this many unacked. */
  maxPending?: number;
}

export interface GroupOptions extends CallOptions {
  /** Deliver events after this id: "$" (default) only new ones, "0" all. */
  startId?: string;
  /** Create a missing stream (else StreamNotFoundError). */
  createStream?: boolean;
  /** An existing group is no error (else GroupExistsError). */
  ifNotExists?: boolean;
  /** Move an event delivered this often to "<stream>:dead". */
  maxDeliveries?: number;
}

export class Events {
  constructor(private readonly transport: Transport) {}

  /** Sends an event to topic's current subscriptions; resolves to how many got it. */
  async publish(topic: string, input: EventInput, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(EventBus.publish, { topic, event: event(input), requestId: requestId() }, options)).receivers);
  }

  /**
   * Subscribes to topics and topic glob patterns. Resolves once the subscriptions are
   * in place, so every event published from then on is delivered; then iterate it
   * with `for await`. Leaving the loop, or `signal`, ends the subscription.
   */
  async subscribe(topics: string[], patterns: string[] = [], options: CallOptions = {}): Promise<AsyncGenerator<TopicMessage>> {
    const messages = iterate(this.transport.serverStream(EventBus.subscribe, { topics, patterns }, options), options.signal);
    const first = await messages.next();
    if (first.done || !first.value.active) {
      await messages.return(undefined);
      throw new CachetError(13, "Subscribe did not begin with active");
    }
    return (async function* () {
      for await (const reply of messages) {
        if (reply.message) yield reply.message;
      }
    })();
  }

  /** Adds an event to a durable stream; resolves to its id. `maxLen` trims the stream to about that many. */
  async append(stream: string, input: EventInput, options: CallOptions & { maxLen?: number } = {}): Promise<string> {
    const request = {
      stream,
      event: event(input),
      maxLen: options.maxLen === undefined ? undefined : BigInt(options.maxLen),
      requestId: requestId(),
    };
    return (await this.transport.unary(EventBus.append, request, options)).id;
  }

  /** Up to `count` events after `afterId` (default: from the start), waiting up to `blockMs` for one. */
  async read(stream: string, options: CallOptions & { afterId?: string; count?: number; blockMs?: number } = {}): Promise<Event[]> {
    const request = { stream, afterId: options.afterId ?? "", count: options.count ?? 0, block: duration(options.blockMs) };
    return (await this.transport.unary(EventBus.read, request, options)).events;
  }

  /** Reads the dead-letter stream "<stream>:dead" like read; each event's `deadLetter` says where it came from. */
  deadLetters(stream: string, options: CallOptions & { afterId?: string; count?: number } = {}): Promise<Event[]> {
    return this.read(`${stream}:dead`, options);
  }

  /** Iterates the events between ids `start` and `end` (default: all), oldest first unless `reverse`, page by page. */
  async *range(
    stream: string,
    options: CallOptions & { start?: string; end?: string; reverse?: boolean; pageSize?: number } = {},
  ): AsyncGenerator<Event> {
    let pageToken = "";
    do {
      const request = {
        stream,
        start: options.start ?? "",
        end: options.end ?? "",
        reverse: options.reverse ?? false,
        pageSize: options.pageSize ?? 0,
        pageToken,
      };
      const reply = await this.transport.unary(EventBus.range, request, options);
      yield* reply.events;
      pageToken = reply.nextPageToken;
    } while (pageToken !== "");
  }

  /** Creates a consumer group; false when it existed (`ifNotExists`). */
  async createGroup(stream: string, group: string, options: GroupOptions = {}): Promise<boolean> {
    const request = {
      stream,
      group,
      startId: options.startId ?? "",
      createStream: options.createStream ?? false,
      ifNotExists: options.ifNotExists ?? false,
      deadLetter: options.maxDeliveries ? { maxDeliveries: BigInt(options.maxDeliveries), maxLen: 0n } : undefined,
    };
    return (await this.transport.unary(EventBus.createGroup, request, options)).created;
  }

  /** Destroys a group with its pending entries; false when it did not exist. */
  async deleteGroup(stream: string, group: string, options?: CallOptions): Promise<boolean> {
    return (await this.transport.unary(EventBus.deleteGroup, { stream, group }, options)).deleted;
  }

  /**
   * Delivers the group's events to `consumer`, at-least-once: each delivery stays
   * pending until acked. Iterate with `for await`; it runs until `signal` aborts or
   * the stream fails (thrown, e.g. GroupNotFoundError); leaving the loop ends it.
   */
  async *consume(stream: string, group: string, consumer: string, options: ConsumeOptions = {}): AsyncGenerator<Delivery> {
    const request = {
      stream,
      group,
      consumer,
      batchSize: options.batchSize ?? 0,
      block: duration(options.blockMs),
      autoClaimMinIdle: duration(options.autoClaimMinIdleMs),
      redeliverPending: options.redeliverPending ?? false,
      maxPending: BigInt(options.maxPending ?? 0),
    };
    for await (const batch of iterate(this.transport.serverStream(EventBus.consume, request, options), options.signal)) {
      for (const delivered of batch.events) yield this.delivery(stream, group, delivered);
    }
  }

  /** Acknowledges ids in the group; resolves to how many were pending (ack is idempotent). */
  async ack(stream: string, group: string, ids: string[], options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(EventBus.ack, { stream, group, ids }, options)).acked);
  }

  /** Summarizes the group's delivered, unacknowledged events. */
  pending(stream: string, group: string, options?: CallOptions): Promise<PendingResponse> {
    return this.transport.unary(EventBus.pending, { stream, group }, options);
  }

  /** One page of the group's pending events. */
  listPending(request: Partial<ListPendingRequest> & { stream: string; group: string }, options?: CallOptions): Promise<ListPendingResponse> {
    const full = { consumer: "", minIdle: undefined, pageSize: 0, pageToken: "", ...request };
    return this.transport.unary(EventBus.listPending, full, options);
  }

  /** Gives `consumer` the group's events pending at least `minIdleMs` (scanning from `startId`, or exactly `ids`). */
  async claim(
    stream: string,
    group: string,
    consumer: string,
    minIdleMs: number,
    options: CallOptions & { startId?: string; ids?: string[]; count?: number } = {},
  ): Promise<{ deliveries: Delivery[]; deadLettered: string[]; nextStartId: string }> {
    const request = {
      stream,
      group,
      consumer,
      minIdle: duration(minIdleMs),
      count: options.count ?? 0,
      startId: options.startId ?? "",
      ids: options.ids ?? [],
    };
    const reply = await this.transport.unary(EventBus.claim, request, options);
    return {
      deliveries: reply.events.map((e) => this.delivery(stream, group, e)),
      deadLettered: reply.deadLetteredIds,
      nextStartId: reply.nextStartId,
    };
  }

  /** Keeps the newest `maxLen` events (`minId`: removes ids below it instead); resolves to how many were removed. */
  async trim(stream: string, by: { maxLen: number } | { minId: string }, options: CallOptions & { approximate?: boolean } = {}): Promise<number> {
    const request = {
      stream,
      maxLen: "maxLen" in by ? BigInt(by.maxLen) : undefined,
      minId: "minId" in by ? by.minId : undefined,
      approximate: options.approximate ?? false,
    };
    return Number((await this.transport.unary(EventBus.trim, request, options)).trimmed);
  }

  /** Describes a stream: length, ids, groups (and their consumers when asked). */
  info(stream: string, options: CallOptions & { includeConsumers?: boolean } = {}): Promise<InfoResponse> {
    return this.transport.unary(EventBus.info, { stream, includeConsumers: options.includeConsumers ?? false }, options);
  }

  private delivery(stream: string, group: string, delivered: Event): Delivery {
    return {
      event: delivered,
      ack: async (options?: CallOptions) => {
        await this.ack(stream, group, [delivered.id], options);
      },
    };
  }
}
