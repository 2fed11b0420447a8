"""cachet-client installs into a fresh virtualenv next to the newest grpcio and protobuf
without a resolver conflict: a user's application keeps the gRPC stack it has.

Needs the package index (the pip cache makes reruns quick); every step is bounded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMEOUT = 300


def _run(*command: str | Path) -> str:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _versions(python: Path) -> dict[str, str]:
    listed = json.loads(_run(python, "-m", "pip", "list", "--format", "json"))
    return {p["name"].lower(): p["version"] for p in listed}


def test_installs_next_to_the_newest_grpcio_and_protobuf(tmp_path: Path):
    source = tmp_path / "cachet-client"
    shutil.copytree(
        ROOT / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    _run(sys.executable, "-m", "venv", tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    # The application's own stack first: the newest releases, unconstrained.
    _run(python, "-m", "pip", "install", "--quiet", "--upgrade", "grpcio", "protobuf")
    before = _versions(python)
    _run(python, "-m", "pip", "install", "--quiet", f"{source}[msgpack]")
    after = _versions(python)
    assert after["grpcio"] == before["grpcio"] and after["protobuf"] == before["protobuf"], (
        f"installing the client moved grpcio/protobuf: {before} -> {after}"
    )
    _run(python, "-m", "pip", "check")
    shown = _run(
        python,
        "-c",
        "import cachet_client, grpc, google.protobuf as p; "
        "codec = cachet_client.serializers.msgpack(); "
        "c = cachet_client.connect_sync('127.0.0.1:1', serializer=codec); "
        "c.close(); print(grpc.__version__, p.__version__)",
    )
    assert shown.split() == [after["grpcio"], after["protobuf"]]
    typed = source / "cachet_client" / "py.typed"
    installed = _run(
        python,
        "-c",
        "import cachet_client, pathlib; print(pathlib.Path(cachet_client.__file__).parent)",
    )
    assert typed.exists() and (Path(installed.strip()) / "py.typed").exists()
    print(
        f"\n[packaging] cachet-client next to grpcio {after['grpcio']}, "
        f"protobuf {after['protobuf']}"
    )
