"""Collect the figures the fault tests wrote (build/reliability/*.json, one per
scenario and topology) into the results tables of docs/reliability.md: the fault
results, and the hostile-tenant table (rows with `"table": "hostile_tenant"`, written
by tests/test_hostile_tenant.py).

`make reliability` runs the fault and hostile-tenant tests and then this script; each
table sits between its two marker comments, and the rest of the document is left as
written. A table with no fresh rows is left as it was.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("CACHET_RELIABILITY_DIR") or ROOT / "build" / "reliability")
DOC = ROOT / "docs" / "reliability.md"
BEGIN = "<!-- reliability-results:begin (written by scripts/reliability_report.py) -->"
END = "<!-- reliability-results:end -->"
HOSTILE_BEGIN = "<!-- hostile-tenant:begin (written by scripts/reliability_report.py) -->"
HOSTILE_END = "<!-- hostile-tenant:end -->"
TOPOLOGY_ORDER = ["sentinel", "cluster", "standalone"]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, object]]) -> str:
    rows = sorted(
        rows,
        key=lambda r: (
            TOPOLOGY_ORDER.index(str(r["topology"])) if r["topology"] in TOPOLOGY_ORDER else 9,
            str(r["scenario"]),
        ),
    )
    cpus = os.cpu_count()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.system()} with {cpus} cores, "
        f"Python {platform.python_version()}; every Redis process on loopback.",
        "",
        "| scenario | topology | outcome | figure |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {_cell(r['scenario'])} | {_cell(r['topology'])} | {_cell(r['outcome'])} "
        f"| {_cell(r['figure'])} |"
        for r in rows
    ]
    return "\n".join(lines)


def hostile_table(rows: list[dict[str, object]]) -> str:
    rows = sorted(rows, key=lambda r: str(r["scenario"]))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.system()} with {os.cpu_count()} "
        f"cores, Python {platform.python_version()}; server, Redis and clients on loopback.",
        "",
        "| abuse | what the attacker got | victim's Gets meanwhile | victim's Get latency |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {_cell(r['scenario'])} | {_cell(r['attacker'])} "
        f"| {_cell(r['victim_success'])} of {_cell(r['victim_gets'])} "
        f"| {_cell(r['victim_latency'])} |"
        for r in rows
    ]
    return "\n".join(lines)


def _replace(text: str, begin: str, end: str, table: str) -> str:
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main() -> int:
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"no results in {RESULTS}: run the fault tests first (make reliability)")
        return 1
    every = [json.loads(f.read_text()) for f in files]
    hostile = [r for r in every if r.get("table") == "hostile_tenant"]
    rows = [r for r in every if r.get("table") != "hostile_tenant"]
    text = DOC.read_text()
    for begin, end in ((BEGIN, END), (HOSTILE_BEGIN, HOSTILE_END)):
        if begin not in text or end not in text:
            print(f"{DOC} lacks the markers {begin}")
            return 1
    if rows:
        text = _replace(text, BEGIN, END, table(rows))
    if hostile:
        text = _replace(text, HOSTILE_BEGIN, HOSTILE_END, hostile_table(hostile))
    DOC.write_text(text)
    print(f"{DOC.relative_to(ROOT)}: {len(rows)} fault rows, {len(hostile)} hostile-tenant rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
