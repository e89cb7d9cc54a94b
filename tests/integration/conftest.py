from __future__ import annotations

from pathlib import Path

import pytest

from latent_guardrail import LatentGuard
from latent_guardrail.hosts import Host, load_host

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        raise RuntimeError(f"the public data sets are expected at {SHARED} (../shared/data beside the clone)")
    return SHARED


@pytest.fixture(scope="session")
def default_host() -> Host:
    return load_host("default")


@pytest.fixture(scope="session")
def default_guard(default_host: Host) -> LatentGuard:
    return LatentGuard.load("default", default_host, progress=False)
