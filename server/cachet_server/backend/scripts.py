"""Lua scripts: read from scripts/*.lua once, loaded into Redis at start-up, called by SHA.

Redis scripts cannot `require`, so the shared helpers of `scripts/_prelude.lua` are
pasted into each script. Only those it uses: a script defines every helper it carries
on every call (a closure each), so a script carrying all of them paid for the unused
ones on every call. The helpers a script uses are found by scanning its body (comments
and strings left out) for the helpers' names, and then the helpers' own bodies, in turn.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Script:
    """A Lua script with the prelude helpers it uses, and its SHA1 for EVALSHA."""

    name: str
    source: str
    sha: str
    # The prelude helpers pasted before the body, in prelude order.
    helpers: tuple[str, ...] = ()


# A script file whose first line is this is refused by Redis (OOM) while used memory
# is over maxmemory, before it runs: every script that adds data starts with it.
# (An unflagged script is refused only if a write that may add memory is its first
# write, so a script that purges first, as the lock script does, would slip through.)
DENY_OOM = "#!lua"
ALLOW_OOM = "#!lua flags=allow-oom"

PRELUDE = "_prelude.lua"

# What is not code in Lua source: long comments, line comments, long strings and
# quoted strings. Removed before names are looked for, so that a helper named in a
# comment or a message is not pulled in.
_NOT_CODE = re.compile(
    r"""
      --\[(?P<comment_level>=*)\[.*?\](?P=comment_level)\]
    | --[^\n]*
    | \[(?P<string_level>=*)\[.*?\](?P=string_level)\]
    | '(?:\\.|[^'\\\n])*'
    | "(?:\\.|[^"\\\n])*"
    """,
    re.DOTALL | re.VERBOSE,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A helper starts at a top-level `local function NAME` or `local NAME =` line (with
# the comment lines right above it) and runs until the next one starts.
_DEFINITION = re.compile(r"local\s+(?:function\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<more>,)?")


def names_in(lua: str) -> set[str]:
    """Every name the Lua code mentions outside comments and strings."""
    return set(_NAME.findall(_NOT_CODE.sub(" ", lua)))


@dataclass(frozen=True)
class Helper:
    name: str
    source: str
    # The helpers this one calls (all defined before it in the prelude).
    uses: frozenset[str]


def parse_prelude(text: str) -> dict[str, Helper]:
    """The prelude's helpers by name, in prelude order. A helper that uses one defined
    after it (a Lua local is visible only below its definition), a definition of two
    names at once, or a name defined twice is refused."""
    lines = text.splitlines()
    starts: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        definition = _DEFINITION.match(line)
        if definition is None:
            continue
        if definition["more"]:
            raise ValueError(f"{PRELUDE}:{number + 1}: define one helper per `local`")
        start = number
        while start > 0 and lines[start - 1].startswith("--"):
            start -= 1
        starts.append((start, definition["name"]))
    helpers: dict[str, Helper] = {}
    for index, (start, name) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(lines)
        source = "\n".join(lines[start:end]).rstrip() + "\n"
        if name in helpers:
            raise ValueError(f"{PRELUDE}: helper {name} is defined twice")
        uses = frozenset(names_in(source) - {name})
        later = {other for _, other in starts[index + 1 :]} & uses
        if later:
            raise ValueError(f"{PRELUDE}: {name} uses {sorted(later)}, defined after it")
        helpers[name] = Helper(name, source, uses & helpers.keys())
    return helpers


def helpers_used(body: str, helpers: dict[str, Helper]) -> tuple[str, ...]:
    """The helpers `body` uses, directly or through other helpers, in prelude order."""
    needed = names_in(body) & helpers.keys()
    pending = list(needed)
    while pending:
        for name in helpers[pending.pop()].uses - needed:
            needed.add(name)
            pending.append(name)
    return tuple(name for name in helpers if name in needed)


@cache
def _prelude() -> dict[str, Helper]:
    folder = resources.files(__package__).joinpath("scripts")
    return parse_prelude(folder.joinpath(PRELUDE).read_text())


@cache
def script(name: str, *, allow_oom: bool = False) -> Script:
    """The script `scripts/<name>.lua` with the prelude helpers it uses (read once per
    process). `allow_oom`: the variant of a flagged script that runs under OOM too, for
    the operations of it that only free or update in place (a lock release)."""
    body = resources.files(__package__).joinpath("scripts").joinpath(f"{name}.lua").read_text()
    shebang = ""
    if body.startswith("#!"):
        # Redis reads the flags only from the very first line.
        shebang, _, body = body.partition("\n")
        if allow_oom:
            shebang = ALLOW_OOM
        shebang += "\n"
    elif allow_oom:
        raise ValueError(f"script {name} has no flags line to turn allow-oom on")
    helpers = _prelude()
    used = helpers_used(body, helpers)
    source = shebang + "".join(helpers[helper].source + "\n" for helper in used) + body
    label = f"{name}(allow-oom)" if allow_oom else name
    return Script(label, source, hashlib.sha1(source.encode()).hexdigest(), used)


def all_scripts() -> list[Script]:
    """Every script shipped with the server, for loading at start-up: both variants of
    a flagged one (a lock release runs the allow-oom one), so that neither's first call
    after a start or a failover finds it missing."""
    folder = resources.files(__package__).joinpath("scripts")
    names = sorted(
        entry.name.removesuffix(".lua")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    )
    every = []
    for name in names:
        every.append(script(name))
        if every[-1].source.startswith(DENY_OOM):
            every.append(script(name, allow_oom=True))
    return every
