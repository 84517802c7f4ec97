"""Summarise the `full` results a GPU run wrote, and (``--write-readme``) put them in benchmarks/README.md.

    python benchmarks/gpu_summary.py results [--write-readme]

Prints one row per results/<experiment>_full.json: device, seconds, date, and how many of the
chapter's claims hold.  The README section between the two GPU markers is replaced.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from utils import claims  # noqa: E402
from utils.tables import HTMLTable  # noqa: E402

BEGIN, END = "<!-- gpu-results:begin -->", "<!-- gpu-results:end -->"


def rows(folder: Path) -> list[list[str]]:
    out = []
    for path in sorted(folder.glob("*_full.json")):
        data = json.loads(path.read_text())
        name = data.get("experiment", path.stem.rsplit("_", 1)[0])
        verdicts = claims.evaluate_results(name, data, "full")
        measured = [v for v in verdicts if v["status"] in ("holds", "fails")]
        held = sum(v["status"] == "holds" for v in measured)
        out.append([name, str(data.get("device", "?")), f"{data.get('seconds', float('nan')):.0f}",
                    str(data.get("date", "?"))[:10], f"{held}/{len(measured)}"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    table = HTMLTable(["experiment", "device", "seconds", "date", "claims holding"], rows(args.folder))
    print(table)
    if args.write_readme:
        readme = ROOT / "benchmarks" / "README.md"
        text = readme.read_text()
        body = "\n".join(["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header),
                          *("| " + " | ".join(r) + " |" for r in table.body)])
        section = f"{BEGIN}\n{body}\n{END}"
        text = text.split(BEGIN)[0] + section + text.split(END)[1] if BEGIN in text else text + "\n" + section + "\n"
        readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
