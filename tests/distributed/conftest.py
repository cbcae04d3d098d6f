"""One local Ray instance per Ray test module of this folder (starting one costs seconds per run);
shut down when the module is done, so no later test finds Ray running.

``Cluster`` joins a Ray instance that is already running and leaves it running, so each run still
places, uses and removes its own actors and placement group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dist_helpers import CLUSTER_CPUS  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'anypo[ray]')")
    import logging

    ray.init(
        num_cpus=CLUSTER_CPUS,
        object_store_memory=512 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    yield ray
    ray.shutdown()
