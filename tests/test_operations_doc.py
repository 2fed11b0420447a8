"""docs/operations.md stays true: every grpcurl command in it runs, in order, against a
live `cachet-server` process, and succeeds."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from cachet_client.proto.cachet.admin.v1 import admin_pb2

from .markdown_docs import DOC_ADDRESS, fenced_blocks, grpcurl_commands, live_cachet, run_documented

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
NAMESPACE_SCOPED = {
    "GetKeyMemoryUsage",
    "ScanKeys",
    "InspectKey",
    "GetBigKeys",
    "FlushNamespace",
}


def documented_commands() -> list[list[str]]:
    """Every grpcurl command of the doc's ```sh blocks, continuation lines joined."""
    blocks = [body for language, body in fenced_blocks(DOC.read_text()) if language == "sh"]
    return [command for block in blocks for command in grpcurl_commands(block)]


def method_of(command: list[str]) -> str:
    return command[-1].rsplit("/", 1)[-1]


def test_the_doc_covers_every_admin_rpc_with_the_namespace_header_where_it_matters():
    commands = documented_commands()
    admin = [c for c in commands if c[-1].startswith("cachet.admin.v1.AdminService/")]
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    assert {m.name for m in service.methods} == {method_of(c) for c in admin}
    for command in admin:
        scoped = method_of(command) in NAMESPACE_SCOPED
        assert ("-H" in command) == scoped, " ".join(command)
    assert all(DOC_ADDRESS in c for c in commands)


@pytest.fixture
def server():
    with live_cachet() as cachet:
        yield cachet


def test_every_documented_grpcurl_command_succeeds(server):
    answers: dict[str, list[dict]] = {}
    for command in documented_commands():
        done = run_documented(command, server)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stderr}"
        assert "Traceback" not in done.stdout + done.stderr
        answers.setdefault(method_of(command), []).append(json.loads(done.stdout or "{}"))

    # What the doc says the commands show, in the order it runs them.
    stats = answers["GetServiceStats"][0]
    shop = next(n for n in stats["namespaces"] if n["namespace"] == "shop")
    assert (int(shop["hits"]), int(shop["misses"]), shop["hit_ratio"]) == (1, 1, 0.5)
    assert sorted(answers["ScanKeys"][0]["keys"]) == ["user:1", "user:2"]
    assert len(answers["ScanKeys"][1]["keys"]) == 3
    assert answers["InspectKey"][0]["found"] is True
    assert answers["GetBigKeys"][0]["keys"]
    info = answers["GetServerInfo"][0]
    assert info["topology"] == "TOPOLOGY_KIND_STANDALONE" and info["nodes"][0]["reachable"]
    dry_run, flush = answers["FlushNamespace"]
    assert int(dry_run["deleted_keys"]) == int(flush["deleted_keys"]) == 6
