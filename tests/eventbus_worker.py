"""A write-behind worker: one consumer of a group, in a process of its own.

    python -m tests.eventbus_worker --address 127.0.0.1:50051 --namespace ns \
        --stream writes --group db --consumer w1 --out w1.txt [--stall-after N]

It consumes batches through EventBusService/Consume (auto-claiming events that
other consumers left idle), "writes" each event by appending its id to `--out`,
and acknowledges the batch once every event of it is written. With
`--stall-after N` it stops after its N-th event, in the middle of a batch and
before acknowledging it (at its first event from the N-th on that is not the last of
its batch), and prints STALLED: the test then kills it with SIGKILL.
SIGTERM ends it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2 as pb
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio


async def work(args: argparse.Namespace) -> None:
    metadata = [("cachet-namespace", args.namespace)]
    processed = 0
    with open(args.out, "a", buffering=1) as out:  # noqa: ASYNC230 (a local file, by line)
        async with aio.insecure_channel(args.address) as channel:
            bus = eventbus_pb2_grpc.EventBusServiceStub(channel)
            consume = bus.Consume(
                pb.ConsumeRequest(
                    stream=args.stream,
                    group=args.group,
                    consumer=args.consumer,
                    batch_size=args.batch_size,
                    block=Duration(nanos=300_000_000),
                    auto_claim_min_idle=Duration(seconds=args.claim_idle_s),
                    redeliver_pending=True,
                    # Batches in flight (in gRPC's buffers or being written) stay pending;
                    # bound them, or they idle long enough for the others to claim them.
                    max_pending=2 * args.batch_size,
                ),
                metadata=metadata,
            )
            async for batch in consume:
                for index, event in enumerate(batch.events):
                    out.write(event.id + "\n")
                    processed += 1
                    unfinished = len(batch.events) - index - 1
                    if args.stall_after and processed >= args.stall_after and unfinished:
                        print(f"STALLED {index + 1} of {len(batch.events)}", flush=True)
                        await asyncio.Event().wait()
                if batch.events:
                    await bus.Ack(
                        pb.AckRequest(
                            stream=args.stream, group=args.group, ids=[e.id for e in batch.events]
                        ),
                        metadata=metadata,
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--claim-idle-s", type=int, default=2)
    parser.add_argument("--stall-after", type=int, default=0)
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    task = loop.create_task(work(args))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
