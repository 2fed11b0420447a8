"""clients/python/README.md: its example programs run against a live server (the TLS
one against a TLS + mTLS + auth server), its snippets parse, and its coverage table
names every RPC of every service with wrapper methods that exist on both clients."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cachet_client
import pytest
from cachet_client.proto.cachet.admin.v1 import admin_pb2
from cachet_client.proto.cachet.cache.v1 import cache_pb2
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2
from cachet_client.proto.cachet.lock.v1 import lock_pb2
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2
from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2

from .server_procs import CachetProcess
from .test_python_client_auth import WRITER_TOKEN, secured_server

pytestmark = pytest.mark.topologies(
    "standalone", reason="the examples show the client, which is topology-neutral"
)

README = Path(__file__).resolve().parent.parent / "clients" / "python" / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def _section(block: str) -> str:
    text = README.read_text()
    before = text[: text.index(block)]
    return re.findall(r"^## (.+)$", before, re.MULTILINE)[-1]


EXAMPLES = {_section(block): block for block in BLOCKS if block.startswith("import ")}


def test_every_service_has_a_short_example():
    for section in ("Cache", "Locks", "Rate limits", "Events", "Admin", "TLS and credentials"):
        assert section in EXAMPLES, f"no example program under '## {section}'"
    for section, program in EXAMPLES.items():
        body = [line for line in program.splitlines() if line.strip()]
        assert len(body) <= 20, f"the {section} example has {len(body)} lines"


def test_snippets_parse():
    for block in BLOCKS:
        ast.parse(block) if block.startswith("import ") else compile(
            block,
            "<README snippet>",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )


@pytest.fixture(scope="module")
def server(topology: Any) -> Iterator[CachetProcess]:
    proc = CachetProcess(topology.url)
    try:
        yield proc.start()
    finally:
        proc.stop()


def _run(program: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    "section",
    [
        "Cache",
        "Locks",
        "Rate limits",
        "Events",
        "Admin",
        "Batch, Session and the batcher",
        "The blocking client",
    ],
)
def test_example_runs(section, server, namespace):
    program = EXAMPLES[section].replace("localhost:50051", server.address)
    program = program.replace('"shop"', repr(namespace))
    done = _run(program)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the example printed nothing"


def test_tls_example_runs(topology, tmp_path, namespace):
    with secured_server(topology.url, tmp_path, namespace, mutual=True) as secured:
        program = EXAMPLES["TLS and credentials"].replace("localhost:50051", secured.address)
        program = program.replace('"shop"', repr(namespace))
        done = _run(program, cwd=tmp_path, CACHET_TOKEN=WRITER_TOKEN)
        assert done.returncode == 0, done.stderr
        assert "alice" in done.stdout


SERVICES = [
    cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
    lock_pb2.DESCRIPTOR.services_by_name["LockService"],
    ratelimit_pb2.DESCRIPTOR.services_by_name["RateLimitService"],
    eventbus_pb2.DESCRIPTOR.services_by_name["EventBusService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
]


def _coverage() -> dict[str, str]:
    rows = re.findall(r"^\| `([\w.]+/\w+)` \| (.+) \|$", README.read_text(), re.MULTILINE)
    return dict(rows)


async def test_coverage_table_names_every_rpc_and_real_methods():
    table = _coverage()
    expected = {f"{s.name}/{m.name}" for s in SERVICES for m in s.methods}
    envoy = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]
    expected |= {f"{envoy.full_name}/{m.name}" for m in envoy.methods}
    assert set(table) == expected, set(table) ^ expected
    clients = [
        cachet_client.connect("127.0.0.1:1"),
        cachet_client.connect_sync("127.0.0.1:1"),
    ]
    for rpc, wrapper in table.items():
        methods = re.findall(r"`(cache|locks|rate_limits|events|admin)\.(\w+)`", wrapper)
        assert methods or "raw stubs" in wrapper, f"{rpc}: no wrapper and no reason"
        for service, name in methods:
            for client in clients:
                assert callable(getattr(getattr(client, service), name)), (rpc, service, name)
                assert getattr(getattr(client, service), name).__doc__, (rpc, name, "docstring")
    await clients[0].close()
    clients[1].close()


async def test_every_public_call_has_a_docstring():
    missing = []
    for name in cachet_client.__all__:
        exported = getattr(cachet_client, name)
        if callable(exported) and not (exported.__doc__ or "").strip():
            missing.append(name)
    clients = [cachet_client.connect("127.0.0.1:1"), cachet_client.connect_sync("127.0.0.1:1")]
    for client in clients:
        for attribute in ("close", "__init__"):
            assert getattr(client, attribute).__doc__ or attribute == "__init__"
        for service in ("cache", "locks", "rate_limits", "events", "admin"):
            surface = getattr(client, service)
            for name in dir(surface):
                if name.startswith("_"):
                    continue
                member = getattr(surface, name)
                if callable(member) and not (member.__doc__ or "").strip():
                    missing.append(f"{type(client).__name__}.{service}.{name}")
    await clients[0].close()
    clients[1].close()
    assert missing == []


async def test_both_clients_have_the_same_surface():
    aclient, sclient = (
        cachet_client.connect("127.0.0.1:1"),
        cachet_client.connect_sync("127.0.0.1:1"),
    )
    try:
        for service in ("cache", "locks", "rate_limits", "events", "admin"):
            names = [
                {n for n in dir(getattr(c, service)) if not n.startswith("_")}
                for c in (aclient, sclient)
            ]
            assert names[0] == names[1], (service, names[0] ^ names[1])
    finally:
        await aclient.close()
        sclient.close()
