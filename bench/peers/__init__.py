"""Other serving systems run on the same machine, model and load client as inferq (bench.load).

Needs the ``bench`` extra (``pip install -e ".[bench]"``). Importing this package sets two Ray
defaults before any peer module imports ``ray`` (Ray reads them at import time and every process
it starts inherits them); a value already in the environment is left alone:

* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray takes the loopback address as the node's address,
  so its own services (GCS, raylet, object manager, workers) talk over 127.0.0.1 only, not over
  the machine's network address (which Ray uses on Linux by default);
* ``RAY_USAGE_STATS_ENABLED=0``: no usage report to the outside world.

If ``ray`` was imported before this package, the first has no effect: ``running_ray_serve`` logs
and records the node address Ray used, so that is visible.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
