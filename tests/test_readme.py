"""README.md stays true: its grpcurl examples run against a live `cachet-server` and
answer what the README says they answer."""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path

import pytest

from .markdown_docs import fenced_blocks, grpcurl_commands, live_cachet, run_documented

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_grpcurl_commands() -> list[list[str]]:
    section = README.read_text().split("## Try it with grpcurl", 1)[1].split("\n## ", 1)[0]
    (block,) = [body for language, body in fenced_blocks(section) if language == "sh"]
    return grpcurl_commands(block)


@pytest.fixture
def server():
    with live_cachet() as cachet:
        yield cachet


def test_readme_grpcurl_examples_are_true(server):
    outputs = []
    for command in readme_grpcurl_commands():
        done = run_documented(command, server)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stderr}"
        outputs.append(done.stdout)
    listed, described, stored, got, health = outputs
    assert "cachet.cache.v1.CacheService" in listed.split()
    assert "google.protobuf.Duration ttl" in described
    assert int(json.loads(stored)["version"]) > 0
    answer = json.loads(got)
    assert answer["found"] is True and base64.b64decode(answer["value"]) == b"alice"
    assert json.loads(health)["status"] == "SERVING"
