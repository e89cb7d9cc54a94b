"""NeMo Guardrails adapter: the latent guard as an input rail, and the host model as NeMo's main LLM.

Add the rail to a NeMo config (Colang 1.0 or 2.x)::

    import_paths: [<latent_guardrail.integrations.nemo.rail_path()>]
    rails: {input: {flows: [latent guard check input]}}       # Colang 2.x: `latent guard check input` in
    custom_data: {latent_guard: {guard: default}}              #   your `flow input rails $input_text`

or in code: ``register(app, guard)``. The ``latent_guardrail`` engine (:class:`LatentHostModel`) runs the host
as the main LLM; with ``passthrough: true`` the rail's check and the answer share one prefill. The
top-level ``integrations/nemoguardrails`` folder is a complete config that runs as is.

Needs ``pip install 'latent-guardrail[nemo]'`` (nemoguardrails >= 0.24.1).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .actions import ACTION_NAME
    from .loading import SETTINGS_KEY, LatentGuardRailSettings, NemoConfigError, shared_guard
    from .provider import PROVIDER_NAME, HostModelOptions, LatentHostModel, PreparedAnswers, register_provider
    from .rail import FLOW_NAME, LatentGuardRail, rail_outcome, rail_path, register

# Names are imported on first use, so that `latent-guardrail --help` (which registers `nemo-chat` from
# `.chat`) neither pays for nor needs NeMo Guardrails.
_EXPORTS = {
    "SETTINGS_KEY": "loading", "LatentGuardRailSettings": "loading",
    "NemoConfigError": "loading", "shared_guard": "loading",
    "PROVIDER_NAME": "provider", "HostModelOptions": "provider", "LatentHostModel": "provider",
    "PreparedAnswers": "provider", "register_provider": "provider",
    "ACTION_NAME": "actions", "FLOW_NAME": "rail", "LatentGuardRail": "rail", "rail_outcome": "rail",
    "rail_path": "rail", "register": "rail",
}

__all__ = [
    "ACTION_NAME",
    "FLOW_NAME",
    "PROVIDER_NAME",
    "SETTINGS_KEY",
    "HostModelOptions",
    "LatentGuardRail",
    "LatentGuardRailSettings",
    "LatentHostModel",
    "NemoConfigError",
    "PreparedAnswers",
    "rail_outcome",
    "rail_path",
    "register",
    "register_provider",
    "shared_guard",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import nemoguardrails  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError(
            "latent_guardrail.integrations.nemo needs NeMo Guardrails: pip install 'latent-guardrail[nemo]'"
        ) from exc
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
