#!/usr/bin/env python3
"""Run ``zraft tail`` straight from a checkout: ``python tools/zraft_tail.py LOG...``.

Uses the installed zraft if there is one, else the checkout this file lives in.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from zraft.tail import main
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from zraft.tail import main

if __name__ == "__main__":
    raise SystemExit(main())
