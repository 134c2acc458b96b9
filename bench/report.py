"""What every benchmark report starts with, and where it is written."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def machine() -> str:
    """One line naming the date, cores, CPU model and Python of this run."""
    cpu = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def write_report(name: str, markdown: str) -> Path:
    """Prints the report and writes it to docs/benchmarks/<name>.md."""
    print(markdown)
    DOCS.mkdir(parents=True, exist_ok=True)
    path = DOCS / f"{name}.md"
    path.write_text(markdown)
    return path


def verdict(ok: bool) -> str:
    """How a report says whether a target was reached."""
    return "met" if ok else "**missed**"
