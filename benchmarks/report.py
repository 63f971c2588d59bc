"""The JSON every benchmark writes to benchmarks/results/: date, machine and the table's rows."""

import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_report(name: str, machine: str, rows: list[dict]) -> dict:
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
