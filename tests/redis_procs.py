"""Real Redis deployments on free loopback ports, for the test fixtures: a standalone
redis-server, a Sentinel group (1 master, N replicas, 3 sentinels) and a Cluster
(3 masters, 1 replica each). Each offers `.kind`, `.url` (a CACHET_REDIS_URL),
`.client()` (a sync redis-py client for that deployment) and `.stop()`."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

LOOPBACK = "127.0.0.1"


def _port_range() -> range:
    """Where this test process picks its listening ports: below the kernel's ephemeral
    range, so no outgoing connection (ours or another process's) takes a port between our
    pick and the server's bind; under pytest-xdist, a slice of it per worker, so two workers
    never pick the same port."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = 10_000
    high = max(ephemeral_low, low + 2_000)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    width = (high - low) // max(workers, 1)
    return range(low + worker * width, low + (worker + 1) * width)


_PORTS = _port_range()
# Not the module's generator: hypothesis seeds that one for each example it runs.
_PICK = random.SystemRandom()


def free_port() -> int:
    for _ in range(1000):
        port = _PICK.choice(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS} on {LOOPBACK}")


def free_port_run(count: int) -> int:
    """A port P with P to P+count-1 all free now: the metrics ports of a `--workers N`
    server, which listens on its configured port plus each worker's slot."""
    for _ in range(100):
        base = free_port()
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on {LOOPBACK}")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last_error})")


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and one server/client certificate for 127.0.0.1, made with openssl."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def available(cls) -> bool:
        return shutil.which("openssl") is not None

    @classmethod
    def make(cls, folder: Path) -> TlsFiles:
        folder.mkdir(parents=True, exist_ok=True)
        ca, ca_key = folder / "ca.crt", folder / "ca.key"
        cert, key, csr = folder / "node.crt", folder / "node.key", folder / "node.csr"
        ext = folder / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        openssl(
            *[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=cachet-test-ca",
            ],
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
        )
        openssl(
            *["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"],
            "-keyout",
            str(key),
            "-out",
            str(csr),
        )
        openssl(
            *["x509", "-req", "-CAcreateserial", "-days", "2"],
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        )
        return cls(ca, cert, key)

    def server_args(self, port: int) -> list[str]:
        """redis-server arguments: TLS only on `port`, plain TCP off."""
        return [
            "--tls-port",
            str(port),
            "--port",
            "0",
            "--tls-cert-file",
            str(self.cert),
            "--tls-key-file",
            str(self.key),
            "--tls-ca-cert-file",
            str(self.ca),
            "--tls-auth-clients",
            "no",
        ]

    def client_kwargs(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}

    def url_query(self) -> str:
        return f"ssl_ca_certs={self.ca}"


class RedisProcess:
    """One redis-server (or redis-sentinel) with its own directory and port."""

    kind = "standalone"

    def __init__(
        self,
        *extra: str,
        port: int | None = None,
        sentinel: bool = False,
        username: str | None = None,
        password: str | None = None,
        config: Sequence[str] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.port = port or free_port()
        self.extra = list(extra)
        self.sentinel = sentinel
        self.username = username
        self.password = password
        self.config = list(config)
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="cachet-test-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        query = f"?{self.tls.url_query()}" if self.tls else ""
        return f"{scheme}://{_userinfo(self.username, self.password)}{self.address}/0{query}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync client straight to this process (whatever its role)."""
        tls = self.tls.client_kwargs() if self.tls else {}
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            username=self.username,
            password=self.password,
            socket_timeout=5,
            **tls,
            **kwargs,
        )

    def start(self) -> RedisProcess:
        conf = self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")
        if not conf.exists():
            conf.write_text("".join(f"{line}\n" for line in self.config))
        binary = "redis-sentinel" if self.sentinel else "redis-server"
        listen = self.tls.server_args(self.port) if self.tls else ["--port", str(self.port)]
        args = [shutil.which(binary) or binary, str(conf), *listen, "--bind", LOOPBACK]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        if not self.sentinel:
            # No persistence; a replica syncs at once instead of after the default 5 s.
            args += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        self.process = subprocess.Popen([*args, *self.extra], stdin=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), what=f"redis on {self.port}")
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)
            self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)

    def info(self, section: str) -> dict[str, Any]:
        reply: dict[str, Any] = self.client().info(section)
        return reply

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _userinfo(username: str | None, password: str | None) -> str:
    user = quote(username or "", safe="")
    if password is None:
        return f"{user}@" if user else ""
    return f"{user}:{quote(password, safe='')}@"


def _auth_config(username: str | None, password: str | None) -> list[str]:
    """redis.conf lines so a node requires these credentials and replicates with them."""
    if password is None:
        return []
    if username is None:
        return [f"requirepass {password}", f"masterauth {password}"]
    return [
        f"user {username} on >{password} ~* &* +@all",
        "user default off",
        f"masteruser {username}",
        f"masterauth {password}",
    ]


@contextlib.contextmanager
def standalone(**kwargs: Any) -> Iterator[RedisProcess]:
    proc = RedisProcess(**kwargs).start()
    try:
        yield proc
    finally:
        proc.stop()


class SentinelGroup:
    """A master, its replicas and three sentinels watching it, all on loopback.

    Sentinel timings are short (down after 1 s) so failover tests stay quick; data
    nodes require `username`/`password`, sentinels their own `sentinel_password`."""

    kind = "sentinel"
    MASTER_NAME = "cachet"

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        username: str | None = "cachet",
        password: str | None = "data-secret",
        sentinel_password: str | None = "sentinel-secret",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
        tls: TlsFiles | None = None,
    ) -> None:
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.username = username
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.tls = tls
        self.nodes: list[RedisProcess] = []
        self.sentinels: list[RedisProcess] = []

    def _data_node(self, *extra: str) -> RedisProcess:
        tls_replication = ["tls-replication yes"] if self.tls else []
        return RedisProcess(
            *extra,
            username=self.username,
            password=self.password,
            config=[*_auth_config(self.username, self.password), *tls_replication],
            tls=self.tls,
        )

    def start(self) -> SentinelGroup:
        master = self._data_node().start()
        self.nodes.append(master)
        for _ in range(self.replica_count):
            self.nodes.append(self._data_node("--replicaof", LOOPBACK, str(master.port)).start())
        wait_until(
            lambda: (
                master.info("replication")["connected_slaves"] == self.replica_count
                and all(n.info("replication")["master_link_status"] == "up" for n in self.nodes[1:])
            ),
            what="replicas to sync",
        )
        name = self.MASTER_NAME
        config = [
            f"sentinel monitor {name} {LOOPBACK} {master.port} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.username:
            config.append(f"sentinel auth-user {name} {self.username}")
        if self.password:
            config.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            config += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        if self.tls:
            config.append("tls-replication yes")
        for _ in range(self.sentinel_count):
            sentinel = RedisProcess(
                sentinel=True, password=self.sentinel_password, config=config, tls=self.tls
            )
            self.sentinels.append(sentinel.start())
        self.wait_settled()
        return self

    def wait_settled(self, timeout: float = 20.0) -> None:
        """Until every live sentinel agrees on one master, sees the others and every
        live replica."""
        live_sentinels = [s for s in self.sentinels if s.alive()]
        live_replicas = sum(1 for n in self.nodes if n.alive()) - 1

        def settled() -> bool:
            masters = set()
            for sentinel in live_sentinels:
                state = sentinel.client().sentinel_master(self.MASTER_NAME)
                if state["num-other-sentinels"] < len(live_sentinels) - 1:
                    return False
                if state["num-slaves"] < live_replicas or "s_down" in state["flags"]:
                    return False
                replicas = sentinel.client().sentinel_slaves(self.MASTER_NAME)
                if sum(1 for r in replicas if r["flags"] == "slave") < live_replicas:
                    return False
                masters.add((state["ip"], state["port"]))
            return len(masters) == 1

        wait_until(settled, timeout=timeout, interval=0.1, what="sentinels to settle")

    def sentinel(self) -> Sentinel:
        tls = self.tls.client_kwargs() if self.tls else {}
        return Sentinel(
            [(LOOPBACK, s.port) for s in self.sentinels if s.alive()],
            sentinel_kwargs={"password": self.sentinel_password, "socket_timeout": 2, **tls},
            username=self.username,
            password=self.password,
            socket_timeout=5,
            **tls,
        )

    def master(self) -> RedisProcess:
        """The data node the sentinels currently name as master."""
        _, port = self.sentinel().discover_master(self.MASTER_NAME)
        return next(n for n in self.nodes if n.port == port)

    def replicas(self) -> list[RedisProcess]:
        master = self.master()
        return [n for n in self.nodes if n is not master and n.alive()]

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        query = []
        if self.sentinel_password:
            query.append(f"sentinel_password={self.sentinel_password}")
        if self.tls:
            query.append(self.tls.url_query())
        tail = f"?{'&'.join(query)}" if query else ""
        return (
            f"{scheme}://{_userinfo(self.username, self.password)}{hosts}/{self.MASTER_NAME}/0"
            f"{tail}"
        )

    def client(self) -> redis.Redis:
        return self.sentinel().master_for(self.MASTER_NAME)

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.nodes]:
            proc.stop()


class ClusterGroup:
    """A Redis Cluster of `masters` primaries with `replicas` replicas each."""

    kind = "cluster"

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        password: str | None = "cluster-secret",
        node_timeout_ms: int = 2000,
        full_coverage: bool = True,
        tls: TlsFiles | None = None,
    ) -> None:
        self.master_count = masters
        self.replica_count = replicas
        self.password = password
        self.node_timeout_ms = node_timeout_ms
        self.full_coverage = full_coverage
        self.tls = tls
        self.nodes: list[RedisProcess] = []

    def start(self) -> ClusterGroup:
        config = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.node_timeout_ms}",
            f"cluster-require-full-coverage {'yes' if self.full_coverage else 'no'}",
            *_auth_config(None, self.password),
        ]
        if self.tls:
            config += ["tls-cluster yes", "tls-replication yes"]
        for _ in range(self.master_count * (1 + self.replica_count)):
            # The bus port defaults to port + 10000, which may be taken or past 65535.
            bus = [f"cluster-port {free_port()}"]
            self.nodes.append(
                RedisProcess(password=self.password, config=[*config, *bus], tls=self.tls).start()
            )
        env = {**os.environ, "REDISCLI_AUTH": self.password or ""}
        tls_flags = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
        subprocess.run(
            [
                "redis-cli",
                *tls_flags,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replica_count),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=60,
        )
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node reports state ok with all slots covered, and every live
        node beyond the masters is a replica in sync with its master."""

        def healthy() -> bool:
            live = [n for n in self.nodes if n.alive()]
            in_sync_replicas = 0
            for node in live:
                info = node.client().cluster("INFO")
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                replication = node.info("replication")
                if replication["role"] == "slave":
                    if replication["master_link_status"] != "up":
                        return False
                    in_sync_replicas += 1
            if in_sync_replicas != len(live) - self.master_count:
                return False
            # ... and every node's own view of the roles has caught up by gossip.
            return all(
                sum("slave" in v["flags"] and "fail" not in v["flags"] for v in view.values())
                == in_sync_replicas
                for view in (node.client().cluster("NODES") for node in live)
            )

        wait_until(healthy, timeout=timeout, interval=0.1, what="cluster to be healthy")

    def roles(self) -> dict[int, tuple[str, int | None]]:
        """port -> ("master", None) or ("slave", master port), as the live nodes see it."""
        live = next(n for n in self.nodes if n.alive())
        nodes: dict[str, dict[str, Any]] = live.client().cluster("NODES")
        port_of = {v["node_id"]: int(k.rsplit(":", 1)[1]) for k, v in nodes.items()}
        roles: dict[int, tuple[str, int | None]] = {}
        for node_id, port in port_of.items():
            state = next(v for v in nodes.values() if v["node_id"] == node_id)
            flags = state["flags"].split(",")
            if "fail" in flags or "noaddr" in flags:
                continue
            if "master" in flags:
                roles[port] = ("master", None)
            else:
                roles[port] = ("slave", port_of.get(state["master_id"]))
        return roles

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisProcess]:
        return [self.node(p) for p, (role, _) in self.roles().items() if role == "master"]

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        return next(self.node(p) for p, (role, of) in self.roles().items() if of == master.port)

    @property
    def url(self) -> str:
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        seeds = ",".join(n.address for n in self.nodes[: self.master_count])
        query = f"?{self.tls.url_query()}" if self.tls else ""
        return f"{scheme}://{_userinfo(None, self.password)}{seeds}{query}"

    def client(self) -> RedisCluster:
        tls = self.tls.client_kwargs() if self.tls else {}
        return RedisCluster(
            startup_nodes=[ClusterNode(LOOPBACK, n.port) for n in self.nodes if n.alive()],
            password=self.password,
            socket_timeout=5,
            **tls,
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


Deployment = RedisProcess | SentinelGroup | ClusterGroup
