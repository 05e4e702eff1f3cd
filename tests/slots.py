"""Pinned test ports, by slot. RMCS_TEST_SLOT (0-4) moves them all, so that two checkouts can
run their suites side by side on one machine; each pytest-xdist worker takes the slot after the
one before it (gw0 the given slot, gw1 the next). A slot owns the ports 21000 + 2000 * slot to
22999 + 2000 * slot (every head's block is its port base to base + 299), below the ephemeral
ports (32768 and up), and its two dashboards at 28265 + 10 * slot."""

from __future__ import annotations

import os

SLOT = int(os.environ.get("RMCS_TEST_SLOT", "0")) + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BLOCK = 21000 + 2000 * SLOT
# Slot 3's block holds 28265-28299 (its GPU head's worker ports): its dashboards go elsewhere.
DASHBOARD = 28265 + 10 * SLOT if SLOT != 3 else 20265
TEMP_ROOT = f"/tmp/rmcs-t{SLOT or ''}"
