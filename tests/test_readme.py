"""README.md stays true: its grpcurl examples run against a live `cachet-server` and
answer what the README says they answer."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from .redis_procs import RedisProcess
from .server_procs import GRPCURL, CachetProcess

README = Path(__file__).resolve().parent.parent / "README.md"
README_ADDRESS = "localhost:50051"


def readme_grpcurl_commands() -> list[list[str]]:
    section = README.read_text().split("## Try it with grpcurl", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.startswith("grpcurl ")]


@pytest.fixture
def server():
    redis_server = RedisProcess().start()
    cachet = CachetProcess(redis_server.url).start()
    try:
        yield cachet
    finally:
        cachet.stop()
        redis_server.stop()


def test_readme_grpcurl_examples_are_true(server):
    outputs = []
    for command in readme_grpcurl_commands():
        argv = [str(GRPCURL)] + [server.address if a == README_ADDRESS else a for a in command[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stderr}"
        outputs.append(done.stdout)
    listed, described, stored, got, health = outputs
    assert "cachet.cache.v1.CacheService" in listed.split()
    assert "google.protobuf.Duration ttl" in described
    assert int(json.loads(stored)["version"]) > 0
    answer = json.loads(got)
    assert answer["found"] is True and base64.b64decode(answer["value"]) == b"alice"
    assert json.loads(health)["status"] == "SERVING"
