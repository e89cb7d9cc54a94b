"""Load guards for NeMo apps, once per process: the rail and the ``latent_guardrail`` main LLM share one host.

Both :func:`~latent_guardrail.integrations.nemo.register` (reading ``custom_data.latent_guard``) and the
``latent_guardrail`` LLM provider (reading ``models[].parameters``) ask :func:`shared_guard` for their guard. Equal
specs give the **same** :class:`~latent_guardrail.LatentGuard` object — one copy of the model in memory, one lock,
and the passthrough rail can hand its prefill to the main LLM. The table holds weak references: a guard nobody
uses any more is freed.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

from latent_guardrail.errors import LatentGuardError
from latent_guardrail.guard import DEFAULT_GUARD, LatentGuard
from latent_guardrail.hosts import DEFAULT_MODEL

__all__ = ["NemoConfigError", "guard_key", "resolve_guard_path", "shared_guard"]


class NemoConfigError(LatentGuardError, ValueError):
    """The NeMo configuration of the latent guard is wrong (raised while ``LLMRails`` is being created)."""


_GUARDS: weakref.WeakValueDictionary[tuple[str, str], LatentGuard] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()  # serialises loads: two apps created at once load a host once


def resolve_guard_path(guard: str, base: str | os.PathLike[str] | None = None) -> str:
    """``"default"``, or the absolute path of a guard artifact folder (a relative path is looked up in ``base``
    first — the NeMo config folder —, then in the working directory).

    Raises:
        NemoConfigError: the folder does not exist or holds no ``guard.json``.
    """
    if guard == DEFAULT_GUARD:
        return guard
    candidates = [Path(guard).expanduser()]
    if base is not None and not candidates[0].is_absolute():
        candidates.insert(0, Path(base) / guard)
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / "guard.json").is_file():
                raise NemoConfigError(
                    f"custom_data.latent_guard.guard: {str(candidate)!r} holds no guard.json; give 'default' or a "
                    "folder written by `latent-guardrail calibrate -o FOLDER` (guard.json + tensors.safetensors)")
            return str(candidate.resolve())
    looked = " or ".join(repr(str(candidate)) for candidate in candidates)
    raise NemoConfigError(
        f"custom_data.latent_guard.guard: no guard artifact folder at {looked}; give 'default' or a folder written "
        "by `latent-guardrail calibrate -o FOLDER`")


def guard_key(guard: str, host: str | None) -> tuple[str, str]:
    """The identity of a (guard, host) pair in the shared table: the resolved guard spec and the host spec."""
    return guard, DEFAULT_MODEL if host is None else str(host)


def shared_guard(guard: str, host: str | None = None) -> LatentGuard:
    """The process-wide guard for ``guard`` (``"default"`` or a resolved artifact folder) on ``host``.

    Raises:
        NemoConfigError: the artifact cannot be loaded or does not fit the host (the cause is chained).
    """
    key = guard_key(guard, host)
    with _LOCK:
        found = _GUARDS.get(key)
        if found is not None:
            return found
        try:
            loaded = LatentGuard.load(guard, host=key[1], progress=False)
        except LatentGuardError as exc:
            raise NemoConfigError(f"cannot load the latent guard {guard!r} on host {key[1]!r}: {exc}") from exc
        _GUARDS[key] = loaded
        return loaded
