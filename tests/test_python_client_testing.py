"""The client's test mode, `cachet_client.testing`: a real cachet-server process with its
own embedded Redis, as a user's tests would use it (plain, and as a pytest plugin)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cachet_client
import pytest
from cachet_client.testing import CachetServer


async def test_cachet_server_serves_both_clients_then_stops():
    with CachetServer() as server:
        with server.connect_sync(namespace="t") as client:
            client.cache.set("k", b"v", ttl=60)
        async with server.connect(namespace="t") as aclient:
            assert (await aclient.cache.get("k")).data == b"v"
            assert (await aclient.admin.server_info()).redis_version
    # Stopped: nothing answers on its port any more.
    with cachet_client.connect_sync(
        server.address, timeout=1, retry=cachet_client.NO_RETRY
    ) as gone:
        with pytest.raises((cachet_client.Unavailable, cachet_client.DeadlineExceeded)):
            gone.cache.get("k")


def test_pytest_plugin_fixtures(tmp_path: Path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["cachet_client.testing"]\n')
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import cachet_client

            def test_one(cachet_server, cachet_namespace):
                with cachet_server.connect_sync(namespace=cachet_namespace) as client:
                    assert client.cache.get("k") is None
                    client.cache.set("k", b"one")

            def test_two(cachet_server, cachet_namespace):
                with cachet_client.connect_sync(
                    cachet_server.address, namespace=cachet_namespace
                ) as client:
                    assert client.cache.get("k") is None  # a namespace of its own
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
