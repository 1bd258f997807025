"""Ray, the scale-out engine of suites (`research/cluster.py`) and batch prediction (`inference/batch.py`):
importing it with a one-line hint when the extra is missing, and one session (connect, or start a local Ray)
per run. Ray is optional (``pip install "glass-ad[distributed]"``); nothing imports it at module level."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

INSTALL_HINT = 'the ray engine needs Ray: pip install "glass-ad[distributed]"'


def import_ray() -> Any:
    """``ray``, or a one-line `RuntimeError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to ``address`` or start a local Ray (no dashboard); disconnect or shut it down on exit.

    A Ray already initialised in this process (a caller that manages its own session) is used as it is and
    left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # Workers must import glass_ad the way this process does (a source checkout on PYTHONPATH too).
    env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if os.environ.get("PYTHONPATH") else None
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "runtime_env": env}
    if address:
        kwargs.pop("include_dashboard")  # a setting of the cluster, not of a client
        ray.init(address=address, **kwargs)
    else:
        # "local": a new Ray of our own even when this machine has a `ray start` cluster (that one is --address auto).
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()
