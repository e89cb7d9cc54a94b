"""Typed errors raised by latent-guardrail.

Every error a user can trigger is a subclass of :class:`LatentGuardError`, so callers can
catch one type; the subclasses say which input was wrong and the message says how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "CalibrationError",
    "DatasetError",
    "FingerprintMismatchError",
    "HostError",
    "InputError",
    "LatentGuardError",
    "LayerError",
    "NumericalError",
    "TemplateError",
    "WeightDriftError",
]


class LatentGuardError(Exception):
    """Base class of every error raised on purpose by latent-guardrail."""


class InputError(LatentGuardError, ValueError):
    """The text or messages given to the guard are not usable (wrong type, empty, malformed)."""


class TemplateError(LatentGuardError):
    """The chat template is missing or the instruction cannot be located in its rendering."""


class LayerError(LatentGuardError):
    """The decoder layers cannot be found, or a requested layer is out of range."""


class ArtifactError(LatentGuardError):
    """A saved guard is missing, corrupt, of an unknown format version, or unsafe to load."""


class FingerprintMismatchError(ArtifactError):
    """A saved guard was fitted for another model, tokenizer, chat template or system prompt."""


class WeightDriftError(FingerprintMismatchError):
    """A saved guard was fitted for the same model with other weights (a fine-tune); allow_weight_drift accepts it."""


class DatasetError(LatentGuardError):
    """A prompt file cannot be read: missing, empty, unknown format, or a missing column."""


class HostError(LatentGuardError):
    """The host model cannot be loaded (missing file, checksum mismatch, bad dtype/device)."""


class CalibrationError(LatentGuardError):
    """Calibration cannot run: too few examples per class, or inconsistent inputs."""


class NumericalError(LatentGuardError):
    """Hidden states or scores are not finite (NaN or inf)."""
