"""The published contract: `protos/cachet.protoset` describes every proto for grpcurl, and
`buf breaking` against the committed baseline (`make lint`) fails on a breaking edit while
letting additions through."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from .server_procs import GRPCURL, ROOT

BUF = ROOT / ".tools" / "bin" / "buf"
PROTOS = ROOT / "protos"
PROTOSET = PROTOS / "cachet.protoset"
BASELINE = PROTOS / "baseline.binpb"
CACHE_PROTO = Path("protos/cachet/cache/v1/cache.proto")


def test_the_protoset_holds_every_proto_with_its_imports_and_comments():
    files = descriptor_pb2.FileDescriptorSet.FromString(PROTOSET.read_bytes()).file
    names = {f.name for f in files}
    ours = {str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto")}
    assert ours <= names
    assert {"google/protobuf/duration.proto", "google/protobuf/timestamp.proto"} <= names
    assert all(f.HasField("source_code_info") for f in files)


def test_grpcurl_describes_a_method_from_the_protoset_alone():
    done = subprocess.run(
        [
            str(GRPCURL),
            "-protoset",
            str(PROTOSET),
            "describe",
            "cachet.cache.v1.CacheService.GetOrLease",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "rpc GetOrLease ( .cachet.cache.v1.GetOrLeaseRequest )" in done.stdout
    assert "// GetOrLease is a read that protects the backing store from stampedes" in done.stdout


@pytest.fixture
def contract_copy(tmp_path: Path) -> Path:
    """A throwaway copy of the buf module, to edit without touching the repository."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(
        PROTOS, tmp_path / "protos", ignore=shutil.ignore_patterns("*.binpb", "*.protoset")
    )
    return tmp_path


def buf_breaking(module: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(BASELINE)],
        cwd=module,
        capture_output=True,
        text=True,
        timeout=60,
    )


def edit(module: Path, old: str, new: str) -> None:
    path = module / CACHE_PROTO
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_the_committed_protos_keep_the_baseline_contract(contract_copy):
    done = buf_breaking(contract_copy)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_added_field_and_rpc_are_not_breaking(contract_copy):
    edit(contract_copy, "message GetRequest {", "message GetRequest {\n  string added_later = 99;")
    edit(
        contract_copy,
        "service CacheService {",
        "service CacheService {\n  rpc AddedLater(GetRequest) returns (GetResponse);",
    )
    done = buf_breaking(contract_copy)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_removed_rpc_fails(contract_copy):
    edit(contract_copy, "  rpc GetOrLease(GetOrLeaseRequest) returns (GetOrLeaseResponse);\n", "")
    done = buf_breaking(contract_copy)
    assert done.returncode != 0
    assert (
        'Previously present RPC "GetOrLease" on service "CacheService" was deleted.' in done.stdout
    )


def test_a_renumbered_field_fails(contract_copy):
    path = contract_copy / CACHE_PROTO
    text = path.read_text()
    request = re.search(r"message GetRequest \{.*?\n\}", text, re.S)
    assert request is not None
    renumbered = re.sub(r"string key = (\d+);", r"string key = 98;", request.group(0), count=1)
    assert renumbered != request.group(0)
    path.write_text(text.replace(request.group(0), renumbered))
    done = buf_breaking(contract_copy)
    assert done.returncode != 0
    assert "cache.proto" in done.stdout and "GetRequest" in done.stdout
