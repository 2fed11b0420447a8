"""How the Lua scripts are assembled (backend/scripts.py): each shipped script carries
exactly the prelude helpers it uses, found by scanning its body, and nothing it uses is
missing. The check of the assembled sources is independent of the assembly: every name
a script reads as a variable must be defined in its own source or be one of the globals
Redis gives scripts (asked of a live Redis), so a helper the assembly left out fails
here, not in production."""

from __future__ import annotations

import re

import pytest
from cachet_server.backend.scripts import (
    Script,
    _prelude,
    all_scripts,
    helpers_used,
    parse_prelude,
    script,
)

# -- an independent reader of Lua names (not the assembly's own scanner)

_LUA_KEYWORDS = {
    *("and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if"),
    *("in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"),
}
_NOT_CODE = re.compile(
    r"--\[(=*)\[.*?\]\1\]|--[^\n]*|\[(=*)\[.*?\]\2\]|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"",
    re.DOTALL,
)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME_LIST = rf"{_NAME}(?:\s*,\s*{_NAME})*"
_DECLARATIONS = [
    re.compile(rf"\blocal\s+function\s+({_NAME})"),
    re.compile(rf"\blocal\s+({_NAME_LIST})"),
    re.compile(r"\bfunction\s*[A-Za-z0-9_.:]*\s*\(([^)]*)\)"),
    re.compile(rf"\bfor\s+({_NAME_LIST})\s*(?:=|in\b)"),
]


def free_names(source: str) -> set[str]:
    """Names `source` reads or calls as variables that it never declares (a local,
    a parameter or a loop variable, anywhere): what it needs from its globals. Fields
    (`a.b`, `a:b()`) and table-constructor keys (`{b = 1}`) are not variables."""
    code = _NOT_CODE.sub(" ", source.partition("\n")[2] if source.startswith("#!") else source)
    declared: set[str] = set()
    for declaration in _DECLARATIONS:
        for match in declaration.finditer(code):
            declared.update(re.findall(_NAME, match.group(1)))
    free = set()
    for match in re.finditer(_NAME, code):
        name, start = match.group(0), match.start()
        before = code[:start].rstrip()
        if name in _LUA_KEYWORDS or name in declared:
            continue
        if before.endswith(":") or (before.endswith(".") and not before.endswith("..")):
            continue
        if before.endswith(("{", ",")) and re.match(r"\s*=(?!=)", code[match.end() :]):
            continue
        free.add(name)
    return free


def shipped() -> list[Script]:
    """Every script the server loads at start-up."""
    scripts = all_scripts()
    assert script("lock_permits", allow_oom=True) in scripts, "both variants of a flagged one"
    assert script("cache_get") in scripts
    return scripts


@pytest.fixture(scope="module")
def redis_globals(redis_standalone) -> set[str]:
    """The globals a Redis script can read, from Redis itself."""
    client = redis_standalone.client()
    try:
        names = client.eval("local t = {} for k in pairs(_G) do t[#t + 1] = k end return t", 0)
    finally:
        client.close()
    return {name.decode() for name in names}


def test_every_script_defines_every_name_it_uses(redis_globals):
    scripts = list(shipped())
    assert len(scripts) > 20
    for item in scripts:
        missing = free_names(item.source) - redis_globals
        assert not missing, f"{item.name} uses {sorted(missing)}, defined nowhere in its source"


def test_the_check_finds_a_helper_left_out(redis_globals):
    """The check above can fail: cache_set with its cachet_touch cut out is caught."""
    item = script("cache_set")
    touch = _prelude()["cachet_touch"].source
    assert touch in item.source
    assert free_names(item.source.replace(touch, "")) - redis_globals == {"cachet_touch"}


def test_every_script_compiles_in_redis(redis_standalone):
    client = redis_standalone.client()
    try:
        for item in shipped():
            assert client.script_load(item.source) == item.sha, item.name
    finally:
        client.close()


def test_a_script_carries_only_the_helpers_it_uses():
    helpers = _prelude()
    by_name = {item.name: item for item in shipped()}
    # cache_get names cachet_next_version in a comment only.
    assert by_name["cache_get"].helpers == ()
    assert "local function cachet" not in by_name["cache_get"].source
    assert by_name["lock_permits"].helpers == ()
    assert by_name["lock_permits(allow-oom)"].helpers == ()
    assert by_name["es_claim"].helpers == ("cachet_int",)
    # cache_delete calls cachet_delete_entry, which calls cachet_void_lease, which reads
    # CACHET_FILL_WAKE_PREFIX: all three, each defined before its first use.
    assert by_name["cache_delete"].helpers == (
        "CACHET_FILL_WAKE_PREFIX",
        "cachet_void_lease",
        "cachet_delete_entry",
    )
    for item in by_name.values():
        for name in helpers:
            assert (helpers[name].source in item.source) == (name in item.helpers), item.name
    # Every helper is used by some script (a dead one would be worth deleting).
    assert set().union(*(item.helpers for item in by_name.values())) == set(helpers)


def test_the_flags_line_stays_first():
    item = script("cache_set")
    assert item.source.startswith("#!lua\n")
    assert script("cache_set", allow_oom=True).source.startswith("#!lua flags=allow-oom\n")
    with pytest.raises(ValueError, match="no flags line"):
        script("cache_get", allow_oom=True)


PRELUDE = """-- header, dropped

-- the base
local function base(x)
  return x
end

local PREFIX = 'p:'

-- uses base and PREFIX
local function derived(x)
  return PREFIX .. base(x)
end

local function unused()
  return 1
end
"""


def test_helpers_are_found_in_code_only_and_transitively():
    helpers = parse_prelude(PRELUDE)
    assert list(helpers) == ["base", "PREFIX", "derived", "unused"]
    assert helpers["derived"].uses == {"base", "PREFIX"}
    assert helpers["base"].source.startswith("-- the base\nlocal function base")
    assert "header" not in "".join(helper.source for helper in helpers.values())
    assert helpers_used("return derived(1)", helpers) == ("base", "PREFIX", "derived")
    assert helpers_used("return base(1) -- not derived()", helpers) == ("base",)
    assert helpers_used("return 'unused' .. \"derived\" .. [[PREFIX]]", helpers) == ()
    assert helpers_used("--[[ derived ]] return unused()", helpers) == ("unused",)
    assert helpers_used("local based = 1 return based", helpers) == ()


@pytest.mark.parametrize(
    ("prelude", "message"),
    [
        ("local function a()\n  return b()\nend\nlocal function b()\nend\n", "defined after"),
        ("local A, B = 1, 2\n", "one helper per"),
        ("local A = 1\nlocal A = 2\n", "defined twice"),
    ],
)
def test_a_prelude_that_cannot_be_split_is_refused(prelude, message):
    with pytest.raises(ValueError, match=message):
        parse_prelude(prelude)
