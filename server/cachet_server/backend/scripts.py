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


# A script file whose first line is this is refused by Redis (OOM) while used memory
# is over maxmemory, before it runs: every script that adds data starts with it.
# (An unflagged script is refused only if a write that may add memory is its first
# write, so a script that purges first, as the lock script does, would slip through.)
DENY_OOM = "#!lua"
ALLOW_OOM = "#!lua flags=allow-oom"


@cache
def script(name: str, *, allow_oom: bool = False) -> Script:
    """The script `scripts/<name>.lua`, prelude included (read once per process).
    `allow_oom`: the variant of a flagged script that runs under OOM too, for the
    operations of it that only free or update in place (a lock release)."""
    folder = resources.files(__package__).joinpath("scripts")
    prelude = folder.joinpath("_prelude.lua").read_text()
    body = folder.joinpath(f"{name}.lua").read_text()
    shebang = ""
    if body.startswith("#!"):
        # Redis reads the flags only from the very first line.
        shebang, _, body = body.partition("\n")
        if allow_oom:
            shebang = ALLOW_OOM
        shebang += "\n"
    elif allow_oom:
        raise ValueError(f"script {name} has no flags line to turn allow-oom on")
    source = shebang + prelude + "\n" + body
    label = f"{name}(allow-oom)" if allow_oom else name
    return Script(label, source, hashlib.sha1(source.encode()).hexdigest())


def all_scripts() -> list[Script]:
    """Every script shipped with the server, for loading at start-up."""
    folder = resources.files(__package__).joinpath("scripts")
    names = sorted(
        entry.name.removesuffix(".lua")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    )
    return [script(name) for name in names]
