"""Lua scripts: read from scripts/*.lua once, loaded into Redis at start-up, called by SHA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Script:
    """A Lua script with the shared prelude, and its SHA1 for EVALSHA."""

    name: str
    source: str
    sha: str


@cache
def script(name: str) -> Script:
    """The script `scripts/<name>.lua`, prelude included (read once per process)."""
    folder = resources.files(__package__).joinpath("scripts")
    prelude = folder.joinpath("_prelude.lua").read_text()
    source = prelude + "\n" + folder.joinpath(f"{name}.lua").read_text()
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


def all_scripts() -> list[Script]:
    """Every script shipped with the server, for loading at start-up."""
    folder = resources.files(__package__).joinpath("scripts")
    names = sorted(
        entry.name.removesuffix(".lua")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    )
    return [script(name) for name in names]
