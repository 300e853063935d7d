#!/usr/bin/env python
"""Write environment.lock.yml: the exact versions installed in this environment.

    .venv/bin/python scripts/write_lock.py
"""

import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout.split()
    pins = sorted((line for line in freeze if "==" in line), key=str.lower)
    lines = ["# Exact versions installed by `make install` (scripts/write_lock.py); conda: "
             "`conda env create -f environment.lock.yml`.",
             "name: vlm-recipes", "channels:", "  - conda-forge", "dependencies:",
             f"  - python={platform.python_version()}", "  - pip", "  - pip:"]
    lines += [f"      - {pin}" for pin in pins]
    (ROOT / "environment.lock.yml").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
