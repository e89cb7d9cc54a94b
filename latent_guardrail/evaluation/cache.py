"""Content-hash cache of evaluation results (arrays and JSON) under ``cache_root()/eval``.

A key hashes everything a result depends on (host fingerprint, the guard's tensors, settings, the prompt
texts), so a re-run with the same inputs is instant and any change recomputes. Entries are written to a
temporary file and renamed, so a crash never leaves a half-written entry; an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets import PromptRecord
from ..errors import LatentGuardError
from ..fingerprint import combine_fingerprint
from ..guard import LatentGuard
from ..hosts import Host, cache_root
from ..settings import CalibrationSettings, Mode

__all__ = ["ResultCache", "calibrate_cached", "content_key", "guard_identity", "host_identity"]

_VERSION = "1"


def content_key(*parts: Any) -> str:
    """A sha256 hex digest of ``parts`` (JSON-serialised; sequences of strings hashed element by element)."""
    digest = hashlib.sha256(_VERSION.encode())
    for part in parts:
        if isinstance(part, list | tuple) and part and all(isinstance(p, str) for p in part):
            for item in part:
                digest.update(hashlib.sha256(item.encode("utf-8")).digest())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def host_identity(host: Host) -> str:
    """The host's fingerprint (model config, tokenizer, template, embedding statistics)."""
    return combine_fingerprint(host.fingerprint_parts(None))


def guard_identity(guard: LatentGuard) -> str:
    """A hash of what a guard's scores depend on: fingerprint, scorer config and tensors, threshold."""
    digest = hashlib.sha256(guard.fingerprint.encode())
    digest.update(json.dumps(guard.fitted.scorer.config(), sort_keys=True, default=str).encode())
    tensors = guard.fitted.scorer.to_tensors()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().to(torch.float64).cpu().numpy().tobytes())
    for tensor in (guard.fitted.centroids.harmful, guard.fitted.centroids.harmless):
        digest.update(tensor.detach().to(torch.float64).cpu().numpy().tobytes())
    digest.update(repr(guard.threshold).encode())
    digest.update(guard.settings.model_dump_json().encode())
    return digest.hexdigest()[:24]


class ResultCache:
    """Arrays (``.npz``) and JSON values keyed by :func:`content_key`; ``enabled=False`` always recomputes."""

    def __init__(self, folder: Path | None = None, *, enabled: bool = True) -> None:
        self.folder = (cache_root() / "eval") if folder is None else Path(folder)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, key: str, suffix: str) -> Path:
        return self.folder / key[:2] / f"{key}{suffix}"

    def _write(self, path: Path, write: Callable[[Path], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
        os.close(handle)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def arrays(self, key: str, compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The arrays stored under ``key``, else ``compute()`` stored then returned."""
        path = self._path(key, ".npz")
        if self.enabled and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    value = {name: data[name] for name in data.files}
                self.hits += 1
                return value
            except (OSError, ValueError):
                pass  # unreadable entry: recompute
        self.misses += 1
        value = {name: np.asarray(array) for name, array in compute().items()}
        if self.enabled:
            def write(tmp: Path) -> None:
                with tmp.open("wb") as stream:
                    np.savez(stream, **value)
            self._write(path, write)
        return value

    def json(self, key: str, compute: Callable[[], Any]) -> Any:
        """The JSON value stored under ``key``, else ``compute()`` stored then returned."""
        path = self._path(key, ".json")
        if self.enabled and path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
                self.hits += 1
                return value
            except (OSError, ValueError):
                pass
        self.misses += 1
        value = compute()
        if self.enabled:
            def write(tmp: Path) -> None:
                tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
            self._write(path, write)
        return value


def calibrate_cached(host: Host, harmful: Sequence[PromptRecord], harmless: Sequence[PromptRecord], *, mode: Mode,
                     cache: ResultCache | None = None, progress: bool = True) -> LatentGuard:
    """A guard fitted (label-only) on ``harmful``/``harmless``, saved under the cache by content hash.

    The first call calibrates and saves the artifact; a later call with the same host, prompts and mode loads it.
    """
    settings = CalibrationSettings(mode=mode)
    key = content_key("guard", host_identity(host), settings.model_dump_json(),
                      [f"{r.category}|{r.text}" for r in harmful], [r.text for r in harmless])
    folder = (cache.folder if cache is not None else cache_root() / "eval") / "guards" / key[:24]
    if cache is not None and not cache.enabled:
        return LatentGuard.calibrate(host, list(harmful), list(harmless), mode=mode, progress=progress)
    if (folder / "guard.json").is_file():
        try:
            return LatentGuard.load(folder, host, progress=progress)
        except LatentGuardError:
            pass  # unreadable: fit again
    guard = LatentGuard.calibrate(host, list(harmful), list(harmless), mode=mode, progress=progress)
    guard.save(folder)
    return guard
