"""pre-commit hook: clear the outputs of the notebooks given on the command line.

Outputs are results of one machine and one run; committing them would put numbers in the
repository that no command reproduces. Code cells keep their source; outputs, execution
counts and per-cell execution metadata go. Exits 1 when it changed a file (pre-commit then
shows the change to stage), 0 when every notebook was already clean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CELL_METADATA_DROPPED = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip(notebook: dict[str, Any]) -> dict[str, Any]:
    """The notebook with empty outputs and no execution counts (a new dict)."""
    cells = []
    for cell in notebook.get("cells", []):
        cell = dict(cell)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        metadata = {k: v for k, v in cell.get("metadata", {}).items()}
        for key in CELL_METADATA_DROPPED:
            metadata.pop(key, None)
        cell["metadata"] = metadata
        cells.append(cell)
    return {**notebook, "cells": cells}


def dumps(notebook: dict[str, Any]) -> str:
    """The layout nbformat writes (indent 1, sorted keys), so a clean file is left unchanged."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(paths: list[str]) -> int:
    changed = 0
    for name in paths:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        clean = dumps(strip(json.loads(text)))
        if clean != text:
            path.write_text(clean, encoding="utf-8")
            print(f"stripped outputs from {path}")
            changed += 1
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
