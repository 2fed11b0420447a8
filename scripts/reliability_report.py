"""Collect the figures the fault tests wrote (build/reliability/*.json, one per
scenario and topology) into the results table of docs/reliability.md.

`make reliability` runs the fault tests and then this script; the table sits between
the two marker comments, and the rest of the document is left as written.
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


def main() -> int:
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"no results in {RESULTS}: run the fault tests first (make reliability)")
        return 1
    rows = [json.loads(f.read_text()) for f in files]
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOC} lacks the result markers")
        return 1
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}")
    print(f"{DOC.relative_to(ROOT)}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
