"""docs/security.md's table of roles is the servicers' call tables, so the two cannot
drift apart."""

from __future__ import annotations

from pathlib import Path

from cachet_server.app import _SERVICES

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def role_table() -> str:
    lines = ["| service | RPCs | needs the role | scope |", "|---|---|---|---|"]
    for servicer, descriptor, _ in _SERVICES:
        groups: dict[tuple[str, str], list[str]] = {}
        for name, spec in sorted(servicer.CALLS.items()):
            groups.setdefault((spec.required(), spec.scope.value), []).append(name)
        for (needs, scope), names in groups.items():
            lines.append(f"| `{descriptor.full_name}` | {', '.join(names)} | {needs} | {scope} |")
    return "\n".join(lines)


def test_the_role_table_is_the_call_tables():
    text = DOC.read_text()
    documented = text.split("<!-- roles:begin -->\n", 1)[1].split("\n<!-- roles:end -->", 1)[0]
    assert documented.strip() == role_table(), "paste role_table() into docs/security.md"
