"""latent-guardrail: judge harmful instructions from the host LLM's own hidden states.

The method is Latent Guard (Zhao et al., "LLMs Encode Harmfulness and Refusal Separately"): the hidden
state at the instruction's last token (t_inst) clusters by harmfulness; a centroid or a calibrated linear
read-out of it gives a verdict for the cost of a few dot products on top of the host's own forward pass.
"""

from __future__ import annotations

from .errors import (
    ArtifactError,
    CalibrationError,
    DatasetError,
    FingerprintMismatchError,
    HostError,
    InputError,
    LatentGuardError,
    LayerError,
    NumericalError,
    TemplateError,
)
from .guard import LatentGuard
from .hosts import Host, load_host
from .settings import SAFETY_SYSTEM_PROMPT, CalibrationSettings, GuardSettings
from .verdict import Verdict

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "CalibrationError",
    "CalibrationSettings",
    "DatasetError",
    "FingerprintMismatchError",
    "GuardSettings",
    "Host",
    "HostError",
    "InputError",
    "LatentGuard",
    "LatentGuardError",
    "LayerError",
    "NumericalError",
    "SAFETY_SYSTEM_PROMPT",
    "TemplateError",
    "Verdict",
    "__version__",
    "load_host",
]
