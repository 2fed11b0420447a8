"""Generate the Python stubs from protos/ into clients/python/cachet_client/proto.

protoc names generated modules after proto packages (`cachet.cache.v1`,
`envoy.service...`). We ship them inside `cachet_client.proto` so they never
collide with other distributions, so the generated imports are rewritten here,
the way temporalio/sdk-python's generator fixes its imports.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
TARGET = ROOT / "clients" / "python" / "cachet_client" / "proto"
BIN = Path(sys.executable).parent
TOP_LEVEL_PACKAGES = ("cachet", "envoy")
_IMPORT_RE = re.compile(rf"^(from|import) ({'|'.join(TOP_LEVEL_PACKAGES)})\.", re.M)


def generate(target: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for src in sorted(Path(tmp).rglob("*")):
            if src.is_dir():
                continue
            dst = target / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = _IMPORT_RE.sub(r"\1 cachet_client.proto.\2.", src.read_text())
            dst.write_text(text)
        for directory in [target, *(p for p in target.rglob("*") if p.is_dir())]:
            (directory / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET)
