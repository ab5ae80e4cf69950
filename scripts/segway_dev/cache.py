"""Where the harness keeps what it downloads and builds: ``$SEGWAY_CACHE_DIR``, else ``<repo>/.cache``.

The fresh-root check (``scripts/check-fresh``) points it at a directory outside the checkout, so a
throw-away root reuses downloads without carrying installed state between runs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir(name: str) -> Path:
    """The cache directory ``name`` (not created)."""
    root = os.environ.get("SEGWAY_CACHE_DIR") or REPO_ROOT / ".cache"
    return Path(root) / name
