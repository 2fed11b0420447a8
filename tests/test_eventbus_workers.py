"""The seed's write-behind queue, end to end: a producer appends 10,000 events; three
consumer processes of one group write them; one is SIGKILLed in the middle of a
batch; the survivors claim what it left behind. Delivery is at-least-once: every
event is written at least once, duplicates are counted, nothing stays pending."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2 as pb
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc

from .conftest import channel_to
from .server_procs import ROOT

EVENTS = 10_000
WORKERS = 3
STALL_AFTER = 125  # mid-batch: batches are 50 events


async def _start_worker(
    port: int, namespace: str, name: str, out: Path, stall_after: int = 0
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.eventbus_worker",
        f"--address=127.0.0.1:{port}",
        f"--namespace={namespace}",
        "--stream=writes",
        "--group=db",
        f"--consumer={name}",
        f"--out={out}",
        f"--stall-after={stall_after}",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )


def _written(files: list[Path]) -> list[str]:
    return [line for f in files if f.exists() for line in f.read_text().split("\n") if line]


async def test_write_behind_survives_a_killed_consumer(cachet, namespace, tmp_path):
    started = time.monotonic()
    async with channel_to(cachet.port, namespace) as channel:
        bus = eventbus_pb2_grpc.EventBusServiceStub(channel)
        await bus.CreateGroup(
            pb.CreateGroupRequest(stream="writes", group="db", start_id="0", create_stream=True)
        )
        files = [tmp_path / f"worker{i}.txt" for i in range(WORKERS)]
        workers = [
            await _start_worker(
                cachet.port, namespace, f"worker{i}", files[i], STALL_AFTER if i == 0 else 0
            )
            for i in range(WORKERS)
        ]
        try:
            # A bound, not a figure: 10,000 events and a consumer killed, on a loaded
            # machine; the figures go to docs/reliability.md.
            async with asyncio.timeout(75):
                appended: list[str] = []
                for first in range(0, EVENTS, 250):
                    replies = await asyncio.gather(
                        *(
                            bus.Append(
                                pb.AppendRequest(
                                    stream="writes",
                                    event=pb.Event(
                                        type="user.updated",
                                        content_type="application/json",
                                        payload=b'{"user": %d}' % n,
                                    ),
                                )
                            )
                            for n in range(first, min(first + 250, EVENTS))
                        )
                    )
                    appended += [r.id for r in replies]
                assert len(set(appended)) == EVENTS
                appended_s = time.monotonic() - started

                victim = workers[0]
                assert victim.stdout is not None
                stalled = (await victim.stdout.readline()).decode().strip()
                assert stalled.startswith("STALLED"), stalled
                victim.send_signal(signal.SIGKILL)
                await victim.wait()
                killed_at = time.monotonic()

                while True:
                    pending = await bus.Pending(pb.PendingRequest(stream="writes", group="db"))
                    if pending.count == 0 and set(_written(files)) >= set(appended):
                        break
                    await asyncio.sleep(0.1)
                recovered_s = time.monotonic() - killed_at
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                await worker.wait()

        written = _written(files)
        counts = Counter(written)
        duplicates = sum(n - 1 for n in counts.values())
        assert set(counts) == set(appended), "an event was lost or invented"
        assert duplicates >= 1, "the killed worker's unacknowledged writes are redone"
        left = await bus.ListPending(pb.ListPendingRequest(stream="writes", group="db"))
        assert list(left.entries) == []
        per_worker = [len(_written([f])) for f in files]
        print(
            f"\nwrite-behind: {EVENTS} events, {len(written)} writes by {WORKERS} workers "
            f"{per_worker}, {duplicates} duplicates (killed when {stalled.lower()}: "
            f"written, not acknowledged), appended in {appended_s:.1f} s, recovered "
            f"{recovered_s:.1f} s after SIGKILL, total {time.monotonic() - started:.1f} s"
        )
