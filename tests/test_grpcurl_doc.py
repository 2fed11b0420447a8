"""docs/grpcurl.md stays true: its shell blocks run, in order, in one shell session (as a
reader would type them) against a live `cachet-server` started with the page's own
configuration, and every answer matches the answer block the page shows after it.

Answer blocks: ```json is a sequence of JSON values matched one by one ("…" matches any
value, a "…" key admits fields left out, "$NAME" binds a value the later blocks use as a
shell variable); ```text is matched line by line ("…" matches any run of lines)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from .markdown_docs import DOC_ADDRESS, fenced_blocks, grpcurl_commands, live_cachet, shell_lines
from .server_procs import GRPCURL, ROOT

DOC = ROOT / "docs" / "grpcurl.md"
ELIDED = "…"
VARIABLE = re.compile(r"\$([A-Z_]+)")
BLOCK_TIMEOUT_S = 30
# grpcurl exits 64 + the status code when the call fails.
GRPCURL_ERROR_EXIT = 64
# What the issue asks the cookbook to show, at least.
REQUIRED_CALLS = (
    {
        "cachet.cache.v1.CacheService/" + m
        for m in ("Set", "Get", "Delete", "GetOrLease", "Fill", "Txn", "HashSet")
    }
    | {
        "cachet.lock.v1.LockService/Acquire",
        "cachet.lock.v1.LockService/Inspect",
        "cachet.lock.v1.LockService/Release",
        "cachet.ratelimit.v1.RateLimitService/Check",
        "cachet.ratelimit.v1.RateLimitService/Reset",
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        "grpc.health.v1.Health/Check",
    }
    | {
        "cachet.eventbus.v1.EventBusService/" + m
        for m in ("Publish", "Subscribe", "Append", "Read", "Consume", "Ack")
    }
    | {
        "cachet.admin.v1.AdminService/" + m
        for m in ("GetServerInfo", "ScanKeys", "InspectKey", "FlushNamespace")
    }
)


def steps() -> list[tuple[str, tuple[str, str] | None]]:
    """Each shell block of the page with the answer block that follows it (None for a
    block that only sets the shell up)."""
    blocks = [b for b in fenced_blocks(DOC.read_text()) if b[0] in ("sh", "json", "text")]
    result: list[tuple[str, tuple[str, str] | None]] = []
    for index, (language, body) in enumerate(blocks):
        if language != "sh":
            assert blocks[index - 1][0] == "sh", f"an answer block follows no command:\n{body}"
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        answer = following if following and following[0] != "sh" else None
        assert answer or not grpcurl_commands(body), f"no answer shown for:\n{body}"
        result.append((body, answer))
    return result


def documented_config() -> tuple[str, str]:
    """The page's configuration YAML, and the API key its first shell block exports."""
    (config,) = [body for language, body in fenced_blocks(DOC.read_text()) if language == "yaml"]
    key = re.search(r"^export CACHET_KEY=(\S+)$", DOC.read_text(), re.M)
    assert key is not None
    return config, key.group(1)


def test_the_page_covers_every_common_call_and_sends_the_headers():
    commands = [c for body, _ in steps() for c in grpcurl_commands(body)]
    called = {c[-1] for c in commands if "/" in c[-1]}
    assert called >= REQUIRED_CALLS, REQUIRED_CALLS - called
    refused_for_auth = 0
    for block, answer in steps():
        for command in grpcurl_commands(block):
            if not (command[-1].startswith(("cachet.", "envoy.")) and "/" in command[-1]):
                continue
            headers = [command[i + 1] for i, a in enumerate(command) if a == "-H"]
            scoped = command[-1] != "cachet.admin.v1.AdminService/GetServerInfo"
            assert any(h.startswith("cachet-namespace: ") for h in headers) == scoped, command
            if "authorization: Bearer $CACHET_KEY" not in headers:
                # Only the example of a refused call goes without the key.
                assert answer is not None and json_values(answer[1])[-1]["code"] == 16, command
                refused_for_auth += 1
    assert refused_for_auth == 1
    describe = [c for c in commands if "describe" in c]
    assert any("-protoset" in c and c[-1].endswith(".GetOrLease") for c in describe)
    assert any("-protoset" not in c for c in describe)


def test_the_documented_key_matches_the_documented_hash():
    config, key = documented_config()
    (api_key,) = yaml.safe_load(config)["auth"]["api_keys"]
    assert api_key["sha256"] == hashlib.sha256(key.encode()).hexdigest()


class ShellSession:
    """One bash process fed block by block, as a terminal would be."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def run(self, script: str) -> tuple[str, int]:
        """Run `script`; answer what it printed (stdout and stderr) and its exit status."""
        marker = f"__block_done_{uuid.uuid4().hex}__"
        # Sourced from a file, not typed into the shell's stdin, so that a command reading
        # its stdin cannot swallow the rest of the session.
        block = self.scratch / f"{marker}.sh"
        block.write_text(script + "\n")
        assert self.process.stdin is not None and self.process.stdout is not None
        command = f"source {block} </dev/null; __status=$?; echo; echo {marker} $__status\n"
        self.process.stdin.write(command.encode())
        self.process.stdin.flush()
        output = b""
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while (end := output.find(marker.encode())) < 0 or not output.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"block still running after {BLOCK_TIMEOUT_S}s:\n{script}"
            if self.selector.select(remaining):
                chunk = os.read(self.process.stdout.fileno(), 65536)
                assert chunk, f"the shell exited while running:\n{script}\n{output.decode()}"
                output += chunk
        status = int(output[end + len(marker) :].split()[0])
        return output[:end].decode().rstrip("\n"), status

    def export(self, name: str, value: str) -> None:
        self.run(f"export {name}={shlex.quote(value)}")

    def close(self) -> None:
        self.selector.close()
        self.process.kill()
        self.process.wait()


def json_values(text: str) -> list[Any]:
    """The JSON values printed one after the other, as grpcurl prints a stream."""
    decoder = json.JSONDecoder()
    values, position = [], 0
    text = text.strip()
    while position < len(text):
        value, position = decoder.raw_decode(text, position)
        values.append(value)
        position += len(text[position:]) - len(text[position:].lstrip())
    return values


def match(expected: Any, actual: Any, bound: dict[str, Any], where: str) -> None:
    if expected == ELIDED:
        return
    if isinstance(expected, str) and (variable := re.fullmatch(VARIABLE, expected)):
        name = variable.group(1)
        if name in bound:
            assert actual == bound[name], f"{where}: {actual!r} is not ${name} ({bound[name]!r})"
        else:
            assert isinstance(actual, str | int), f"{where}: ${name} would be {actual!r}"
            bound[name] = actual
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        shown = set(expected) - {ELIDED}
        assert shown <= set(actual), f"{where}: {sorted(shown - set(actual))} missing"
        if expected.get(ELIDED) != ELIDED:
            assert set(actual) == shown, f"{where}: {sorted(set(actual) - shown)} not shown"
        for name in shown:
            match(expected[name], actual[name], bound, f"{where}.{name}")
        return
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            match(want, got, bound, f"{where}[{index}]")
        return
    assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def match_text(expected: str, actual: str) -> None:
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line == ELIDED else re.escape(line) + r"\n"
        for line in expected.splitlines()
    )
    assert re.fullmatch(pattern, actual + "\n"), f"expected:\n{expected}\ngot:\n{actual}"


@pytest.fixture
def server(tmp_path: Path):
    config, _ = documented_config()
    config_file = tmp_path / "cachet.yaml"
    config_file.write_text(config)
    # The page's auth section applies whatever the test environment sets.
    with live_cachet(CACHET_CONFIG_FILE=str(config_file), CACHET_AUTH__MODE="required") as cachet:
        yield cachet


def test_every_documented_command_answers_what_the_page_shows(server, tmp_path):
    env = {**os.environ, "PATH": f"{GRPCURL.parent}:{os.environ['PATH']}"}
    shell = ShellSession(env, tmp_path)
    bound: dict[str, Any] = {}
    try:
        for block, answer in steps():
            output, status = shell.run(block.replace(DOC_ADDRESS, server.address))
            where = " then ".join(command[-1] for command in grpcurl_commands(block))
            assert "Traceback" not in output
            if answer is None:
                assert (status, output) == (0, ""), f"{block}\n{output}"
                continue
            language, shown = answer
            if language == "text":
                assert status == 0, f"{block}\n{output}"
                match_text(shown.removesuffix("\n"), output)
                continue
            try:
                got = json_values(output)
            except json.JSONDecodeError:
                pytest.fail(f"not JSON: {block}\n{output}")
            match(json_values(shown), got, bound, where)
            # A block's status is its last command's: a grpcurl call that fails exits
            # 64 + its status code, anything else 0.
            last, ends_with_call = got[-1], shell_lines(block)[-1].startswith("grpcurl ")
            failed = ends_with_call and isinstance(last, dict) and {"code", "message"} <= set(last)
            assert status == (GRPCURL_ERROR_EXIT + last["code"] if failed else 0), output
            for name, value in bound.items():
                shell.export(name, str(value))
        assert {"LEASE_TOKEN", "OWNER_TOKEN", "EVENT_ID", "PUBLISHED_ID"} <= set(bound)
    finally:
        shell.close()
