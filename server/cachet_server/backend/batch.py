"""Batch: independent operations sent to Redis as one pipeline per node.

Each store describes one operation as a `Step` (its commands and how their replies
become the answer); `run_steps` sends every step's commands in one `Backend.pipeline`
and answers each step on its own, so one refused or failed operation leaves the others
untouched. Nothing here is atomic across steps; each step's script is atomic on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ..errors import CachetError, domain_error
from .core import Backend, Command


@dataclass(frozen=True, slots=True)
class Step:
    """One operation: `commands`, and `answer`, which turns their replies into the
    operation's result or raises a CachetError. `after` runs once the answer is known
    (e.g. re-listing a key in its tag indexes) and is awaited before the call answers."""

    commands: Sequence[Command]
    answer: Callable[[list[Any]], Any]
    after: Callable[[Any], Awaitable[None]] | None = None


async def run_steps(backend: Backend, steps: Sequence[Step]) -> list[Any]:
    """Each step's result, or the CachetError it ended with, in order."""
    replies = await _replies(backend, [command for step in steps for command in step.commands])
    results: list[Any] = []
    followups: list[Awaitable[None]] = []
    position = 0
    for step in steps:
        mine = replies[position : position + len(step.commands)]
        position += len(step.commands)
        failed = next((reply for reply in mine if isinstance(reply, Exception)), None)
        if failed is not None:
            results.append(domain_error(failed))
            continue
        try:
            value = step.answer(mine)
        except CachetError as exc:
            results.append(exc)
            continue
        results.append(value)
        if step.after is not None:
            followups.append(step.after(value))
    if followups:
        # Shielded like the unary paths: a cancelled call must not leave a key unlisted.
        await asyncio.shield(asyncio.gather(*followups))
    return results


async def _replies(backend: Backend, commands: Sequence[Command]) -> list[Any]:
    """The replies of `commands`, as `Backend.pipeline` answers them. A lone script (a
    batch of gets of one slot, a Session round of one request) takes `Backend.run`
    instead, the cheaper path, where it is coalesced with other calls' scripts; as in
    a pipeline, its own error (a script's error, too few replicas) is its reply."""
    script = commands[0].script if len(commands) == 1 else None
    if script is None:
        return await backend.pipeline(commands)
    command = commands[0]
    run = backend.run_write if command.writes else backend.run
    try:
        return [await run(script, command.keys, command.args)]
    except (ResponseError, CachetError) as exc:
        return [exc]
