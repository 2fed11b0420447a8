"""The three clients agree on one live `cachet-server` and one real Redis: what Go writes,
TypeScript and Python read; a Python lock holds Go back; a TypeScript event reaches a
Python consumer; a limit Go uses up is exhausted for TypeScript too; what Java writes, Python
reads, and a lock Go holds keeps Java waiting.

The Go side is `clients/go/internal/crosslang` (built once per session), the TypeScript
side `tests/cross_language/crosslang.cjs` over the built package (built once per session),
the Java side `CrossLanguageDriver` in clients/java's test classes (built once per session);
each run makes one kind of call and prints JSON lines. Every step is bounded in time."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cachet_client
import pytest

from .redis_procs import RedisProcess
from .server_procs import ROOT, CachetProcess

GO_CLIENT = ROOT / "clients" / "go"
TS_CLIENT = ROOT / "clients" / "typescript"
TS_DRIVER = Path(__file__).resolve().parent / "cross_language" / "crosslang.cjs"
JAVA_CLIENT = ROOT / "clients" / "java"
STEP_TIMEOUT_S = 30
BUILD_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def go_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("crosslang") / "crosslang"
    subprocess.run(
        ["go", "build", "-o", str(binary), "./internal/crosslang"],
        cwd=GO_CLIENT,
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )
    return binary


@pytest.fixture(scope="session")
def ts_client() -> Path:
    """The TypeScript package, built (`npm run build`) so node can load it."""
    subprocess.run(
        ["npm", "run", "--silent", "build"], cwd=TS_CLIENT, check=True, timeout=BUILD_TIMEOUT_S
    )
    return TS_CLIENT


@pytest.fixture(scope="session")
def java_driver(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command running the Java driver: clients/java's classes and test classes, built
    by Maven (offline once `make setup` fetched its dependencies), and their classpath."""
    classpath = tmp_path_factory.mktemp("crosslang-java") / "classpath"
    subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(JAVA_CLIENT),
            "test-compile",
            "dependency:build-classpath",
            "-Dmdep.includeScope=test",
            f"-Dmdep.outputFile={classpath}",
        ],
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )
    built = [JAVA_CLIENT / "target" / "classes", JAVA_CLIENT / "target" / "test-classes"]
    paths = [*map(str, built), classpath.read_text().strip()]
    return ["java", "-cp", ":".join(paths), "dev.cachet.client.CrossLanguageDriver"]


@pytest.fixture(scope="module")
def server(redis_standalone: RedisProcess) -> Iterator[CachetProcess]:
    cachet = CachetProcess(redis_standalone.url, CACHET_AUTH__MODE="off").start()
    try:
        yield cachet
    finally:
        cachet.stop()


@pytest.fixture
def namespace() -> str:
    return f"xl-{uuid.uuid4().hex[:10]}"


def answers(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def run_go(driver: Path, server: CachetProcess, namespace: str, *args: str) -> list[dict]:
    done = subprocess.run(
        [str(driver), "-target", server.address, "-namespace", namespace, *args],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return answers(done.stdout)


def run_java(
    driver: list[str], server: CachetProcess, namespace: str, operation: str, **params: str
) -> list[dict]:
    done = subprocess.run(
        [*driver, server.address, namespace, operation, *(f"{k}={v}" for k, v in params.items())],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return answers(done.stdout)


def run_ts(client: Path, server: CachetProcess, namespace: str, operation: str, **params) -> dict:
    done = subprocess.run(
        [
            "node",
            str(TS_DRIVER),
            str(client),
            server.address,
            namespace,
            operation,
            json.dumps(params),
        ],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    (answer,) = answers(done.stdout)
    return answer


async def test_a_value_set_from_go_is_read_from_typescript_and_python(
    go_driver, ts_client, server, namespace
):
    value = "grüße from Go"
    (written,) = run_go(go_driver, server, namespace, "set", "-key", "greeting", "-value", value)
    version = int(written["version"])

    from_ts = run_ts(ts_client, server, namespace, "get", key="greeting")
    assert (from_ts["found"], from_ts["value"], int(from_ts["version"])) == (True, value, version)

    async with cachet_client.connect(server.address, namespace=namespace) as client:
        from_python = await client.cache.get("greeting")
    assert from_python is not None
    assert (from_python.data.decode(), from_python.version) == (value, version)


async def test_a_lock_held_from_python_blocks_go_until_released_then_go_gets_a_larger_token(
    go_driver, server, namespace
):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        lease = await client.locks.acquire("nightly-report", ttl=timedelta(seconds=60))
        go = await asyncio.create_subprocess_exec(
            str(go_driver),
            "-target",
            server.address,
            "-namespace",
            namespace,
            "acquire",
            "-name",
            "nightly-report",
            "-ttl",
            "30s",
            "-wait",
            "25s",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert go.stdout is not None
            first = await asyncio.wait_for(go.stdout.readline(), STEP_TIMEOUT_S)
            assert json.loads(first) == {"acquiring": "nightly-report"}
            # Python holds the lock for 60 s and releases it only below, so Go must still
            # be waiting now, however loaded the machine (the pause lets its call arrive).
            await asyncio.sleep(0.5)
            assert go.returncode is None
            await client.locks.release(lease)
            output, errors = await asyncio.wait_for(go.communicate(), STEP_TIMEOUT_S)
        finally:
            if go.returncode is None:
                go.kill()
                await go.wait()
    assert go.returncode == 0, errors.decode()
    (granted,) = answers(output.decode())
    assert int(granted["fencing_token"]) > lease.fencing_token


async def test_an_event_appended_from_typescript_is_consumed_and_acked_from_python(
    ts_client, server, namespace
):
    payload = json.dumps({"order": 7, "from": "typescript"})
    appended = run_ts(
        ts_client,
        server,
        namespace,
        "append",
        stream="orders",
        type="order.created",
        payload=payload,
    )

    async with cachet_client.connect(server.address, namespace=namespace) as client:
        await client.events.create_group("orders", "billing", start_id="0")
        deliveries = client.events.consume("orders", "billing", "py-1")
        try:
            delivery = await asyncio.wait_for(anext(deliveries), STEP_TIMEOUT_S)
            assert (delivery.event.id, delivery.event.type, delivery.event.payload) == (
                appended["id"],
                "order.created",
                payload.encode(),
            )
            await delivery.ack()
        finally:
            await deliveries.aclose()
        pending = await client.events.pending("orders", "billing")
    assert pending.count == 0


def test_a_rate_limit_used_up_from_go_is_seen_exhausted_from_typescript(
    go_driver, ts_client, server, namespace
):
    limit = ["-key", "api:tenant-1", "-limit", "3", "-period", "1h"]
    counted, refused = run_go(go_driver, server, namespace, "use-up", *limit)
    assert counted == {"allowed": 3}
    assert "allowed" not in refused  # proto3 JSON leaves false out
    assert refused["limit"] == "3" and "remaining" not in refused

    seen = run_ts(
        ts_client, server, namespace, "check", key="api:tenant-1", limit=3, periodSeconds=3600
    )
    assert (seen["allowed"], seen["remaining"]) == (False, "0")
    assert seen["retryAfterSeconds"] > 0


async def test_a_value_set_from_java_is_read_from_python(java_driver, server, namespace):
    value = "grüße from Java"
    (written,) = run_java(java_driver, server, namespace, "set", key="greeting", value=value)

    async with cachet_client.connect(server.address, namespace=namespace) as client:
        from_python = await client.cache.get("greeting")
    assert from_python is not None
    assert (from_python.data.decode(), from_python.version) == (value, int(written["version"]))


async def test_a_lock_held_from_go_blocks_java_until_released_then_java_gets_a_larger_token(
    go_driver, java_driver, server, namespace
):
    # Go takes the lock for 60 s and exits holding it; its answer carries the owner token.
    acquiring, held = run_go(
        go_driver, server, namespace, "acquire", "-name", "nightly-export", "-ttl", "60s"
    )
    assert acquiring == {"acquiring": "nightly-export"}
    java = await asyncio.create_subprocess_exec(
        *java_driver,
        server.address,
        namespace,
        "acquire",
        "name=nightly-export",
        "ttl_s=30",
        "wait_s=25",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert java.stdout is not None
        first = await asyncio.wait_for(java.stdout.readline(), STEP_TIMEOUT_S)
        assert json.loads(first) == {"acquiring": "nightly-export"}
        async with cachet_client.connect(server.address, namespace=namespace) as client:
            # Java's Acquire is queued behind Go's 60 s grant before the release (printing
            # "acquiring" comes before its call reaches the server on a loaded machine).
            deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT_S
            while (await client.locks.inspect("nightly-export")).waiters < 1:
                assert java.returncode is None, "Java stopped before its Acquire queued"
                assert asyncio.get_running_loop().time() < deadline, "Java's Acquire never queued"
                await asyncio.sleep(0.05)
            await client.locks.release(
                cachet_client.Lease(
                    "nightly-export", held["owner_token"], int(held["fencing_token"])
                )
            )
        output, errors = await asyncio.wait_for(java.communicate(), STEP_TIMEOUT_S)
    finally:
        if java.returncode is None:
            java.kill()
            await java.wait()
    assert java.returncode == 0, errors.decode()
    (granted,) = answers(output.decode())
    assert int(granted["fencing_token"]) > int(held["fencing_token"])
    # The server itself says the Acquire waited for the release.
    assert granted["waited_ms"] > 0
