from __future__ import annotations

import pytest

from latent_guardrail.hosts import Host
from tests.support.models import make_host


@pytest.fixture(scope="session")
def tiny_host() -> Host:
    return make_host("chatml")
