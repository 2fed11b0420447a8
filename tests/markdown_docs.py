"""Helpers for the tests that keep the docs true: the fenced blocks of a Markdown page, the
grpcurl commands in them, and a live server to run them against."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from collections.abc import Iterator

from .redis_procs import RedisProcess
from .server_procs import GRPCURL, CachetProcess

# The address every doc's commands are written for (`make run`).
DOC_ADDRESS = "localhost:50051"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """Every fenced code block of `markdown`, in order, as (language, body)."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(markdown)]


def shell_lines(block: str) -> list[str]:
    """The logical lines of a shell block: continuation lines joined, and newlines inside
    quotes (a JSON body spread over lines) kept within their line."""
    lines, current, quote, index = [], "", "", 0
    while index < len(block):
        char = block[index]
        if char == "\\" and quote != "'":
            escaped = block[index + 1 : index + 2]
            current += " " if escaped == "\n" and not quote else char + escaped
            index += 2
            continue
        if char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        if char == "\n" and not quote:
            lines.append(current)
            current = ""
        else:
            current += char
        index += 1
    return [*lines, current] if current else lines


def grpcurl_commands(block: str) -> list[list[str]]:
    """The grpcurl commands of a shell block as argv lists, without redirections."""
    commands = []
    for line in shell_lines(block):
        if line.strip().startswith("grpcurl "):
            words = shlex.split(line)
            ends = [i for i, w in enumerate(words) if w[0] in "<>|&;"]
            commands.append(words[: ends[0]] if ends else words)
    return commands


def run_documented(command: list[str], server: CachetProcess) -> subprocess.CompletedProcess[str]:
    """Run a documented grpcurl command against `server` instead of the doc's address."""
    argv = [str(GRPCURL)] + [server.address if a == DOC_ADDRESS else a for a in command[1:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def live_cachet(**env: str) -> Iterator[CachetProcess]:
    """A `cachet-server` process in front of its own standalone redis-server."""
    redis_server = RedisProcess().start()
    try:
        cachet = CachetProcess(redis_server.url, **env).start()
        try:
            yield cachet
        finally:
            cachet.stop()
    finally:
        redis_server.stop()
