"""A content-addressed, size-bounded cache of extracted hidden states, one safetensors file per prompt.

Extending a guard (:mod:`latent_guardrail.extend`) refits on the base guard's calibration prompts plus the new
ones; reading the base prompts' states again would take minutes on a CPU, so the states at every clause end are
kept here the first time they are read. An entry holds one prompt's clause-end states ``(ends, layers, d)``
(float32) and the prompt's encoding (token ids, clause ends; JSON in the file's metadata), and is keyed by a
SHA-256 of everything that decides them (:func:`state_key`): an identity (the host fingerprint — weights,
tokenizer, chat template, system prompt — and the guard settings that shape the encoding), the layer template
and layers, the view, the most ends kept, and the text as judged (normalised). A changed text, host, setting or
layer set is simply another key; a hit needs neither the model nor the tokenizer.

- **Stale encodings**: each lookup re-encodes a few hits (``check``) and compares them with the stored
  encodings; when one differs (the encoding code changed), every hit is re-encoded and those that differ are
  read again (with a :class:`StateCacheWarning`).

- **Layout**: ``<root>/<first two hex digits>/<key>.safetensors``; root ``cache_root()/states`` by default
  (``$LATENT_GUARDRAIL_CACHE``), or the folder given.
- **Concurrent writers**: an entry is written to a temporary file in its own folder and renamed into place
  (``os.replace``, atomic on one file system), so a reader sees a whole entry or none, and two writers of one key
  leave one whole file (both wrote the same states).
- **Corrupt entry** (unreadable, or its stored key or shape does not match): a :class:`StateCacheWarning` names
  it, it is deleted and the states are read again. A failure is never cached: only finite states are written.
- **Bounded**: after a write the total size is kept under ``max_bytes`` (``$LATENT_GUARDRAIL_STATE_CACHE_MB``,
  default 2048 MB) by deleting the least recently used entries (a hit refreshes an entry's time).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .activations import extract_end_states
from .hosts import cache_root
from .positions import Prompt, PromptEncoding
from .settings import GuardSettings

__all__ = ["CacheStats", "StateCache", "StateCacheWarning", "cached_end_states", "encoding_identity", "state_key",
           "DEFAULT_MAX_BYTES", "FORMAT"]

FORMAT = "latent-guardrail/states/2"
DEFAULT_MAX_BYTES = 2048 * 1024 * 1024
_SUFFIX = ".safetensors"
_CHUNK = 512


class StateCacheWarning(UserWarning):
    """A cache entry could not be used (corrupt or mismatched) and was recomputed."""


def state_key(identity: str, layer_template: str | None, layers: Sequence[int], view: str, max_ends: int | None,
              prompt: Prompt) -> str:
    """The content address of one prompt's states: SHA-256 hex of the identity (host and encoding settings,
    :func:`encoding_identity`), layers, view and the text as judged."""
    digest = hashlib.sha256(FORMAT.encode())
    head = {"identity": identity, "layer_template": layer_template, "layers": [int(x) for x in layers],
            "view": view, "max_ends": max_ends}
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update(b"\0prompt:" + json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


_DECISION_ONLY = {"threshold", "category_policy", "category_thresholds", "on_error", "on_overflow", "batch_size",
                  "steer_layer", "steer_coeff", "steer_fallback"}


def encoding_identity(fingerprint: str, settings: GuardSettings) -> str:
    """What besides the text decides a prompt's encoding and states: the host fingerprint and every guard setting
    that is not only about decisions (a setting added later counts until listed as decision-only)."""
    shaping = settings.model_dump(mode="json", exclude=_DECISION_ONLY)
    return hashlib.sha256(json.dumps({"fingerprint": fingerprint, "settings": shaping}, sort_keys=True).encode()
                          ).hexdigest()


@dataclass
class CacheStats:
    """What one cache object did: ``hits``, ``misses`` (read and written), ``corrupt`` (recomputed), ``evicted``."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evicted: int = 0


class StateCache:
    """The on-disk store of per-prompt states (see the module docstring). Thread- and process-safe."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "states"
        if max_bytes is None:
            env = os.environ.get("LATENT_GUARDRAIL_STATE_CACHE_MB")
            max_bytes = int(float(env) * 1024 * 1024) if env else DEFAULT_MAX_BYTES
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"a state key is 64 lower-case hex digits, got {key!r}")
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    def get(self, key: str, *, layers: int | None = None, max_ends: int | None = None
            ) -> tuple[torch.Tensor, PromptEncoding] | None:
        """The states ``(ends, layers, d)`` and the encoding stored under ``key``, or None (a miss; a corrupt entry
        is deleted with a :class:`StateCacheWarning`). ``layers``: the layer count expected; ``max_ends``: at most
        this many ends were kept."""
        path = self.path(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        problem = None
        try:
            tensors = load_bytes(data)
            states = tensors.get("states")
            meta = _metadata(data)
            encoding = PromptEncoding.model_validate_json(meta.get("encoding", "null"))
            width = max(1, len(encoding.ends[-max_ends:] if max_ends else encoding.ends))
            if states is None or meta.get("key") != key or meta.get("format") != FORMAT:
                problem = "its stored key or format does not match"
            elif states.dim() != 3 or states.shape[0] != width or (layers is not None and states.shape[1] != layers):
                problem = f"its states have shape {tuple(states.shape)}"
            elif not bool(torch.isfinite(states).all()):
                problem = "its states are not finite"
        except (SafetensorError, ValueError, RuntimeError, OSError, json.JSONDecodeError) as exc:
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
        if problem is not None:
            warnings.warn(f"state cache entry {path} is corrupt ({problem}); it is deleted and recomputed",
                          StateCacheWarning, stacklevel=2)
            with self._lock:
                self.stats.corrupt += 1
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # least-recently-used order
        except OSError:
            pass
        with self._lock:
            self.stats.hits += 1
        assert states is not None  # checked above (a missing tensor is a problem)
        return states, encoding

    def put(self, key: str, states: torch.Tensor, encoding: PromptEncoding) -> Path:
        """Store ``states`` ``(ends, layers, d)`` and ``encoding`` under ``key`` (atomically; finite states only)."""
        if states.dim() != 3:
            raise ValueError(f"states must be (ends, layers, d), got {tuple(states.shape)}")
        if not bool(torch.isfinite(states).all()):
            raise ValueError("refusing to cache states with NaN or inf entries")
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        os.close(handle)
        try:
            save_file({"states": states.detach().to("cpu", torch.float32).contiguous()}, tmp,
                      metadata={"key": key, "format": FORMAT, "encoding": encoding.model_dump_json()})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        with self._lock:
            self.stats.misses += 1
        return path

    def entries(self) -> list[Path]:
        """Every entry file (no temporary files)."""
        if not self.root.is_dir():
            return []
        return [p for p in self.root.glob(f"??/*{_SUFFIX}") if not p.name.startswith(".")]

    def size(self) -> int:
        """Total bytes of the entries."""
        total = 0
        for path in self.entries():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def prune(self) -> int:
        """Delete least recently used entries until the total is at most ``max_bytes``; returns how many."""
        sized = []
        for path in self.entries():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            sized.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in sized)
        removed = 0
        for _, size, path in sorted(sized):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        with self._lock:
            self.stats.evicted += removed
        return removed

    def clear(self) -> None:
        """Delete every entry."""
        for path in self.entries():
            path.unlink(missing_ok=True)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def cached_end_states(model: torch.nn.Module, prompts: Sequence[Prompt], layers: Sequence[int], *,
                      encode: Callable[[Sequence[Prompt]], list[PromptEncoding]], cache: StateCache | None,
                      identity: str, pad_token_id: int, batch_size: int = 16, layer_template: str | None = None,
                      max_ends: int | None = None, progress: bool | str = False, check: int = 8
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[PromptEncoding]]:
    """The clause-end states of ``prompts`` (texts as judged) through ``cache``: prompts found there are neither
    encoded nor read again (``check`` of them are re-encoded to catch a changed encoding), the others are encoded
    with ``encode``, read in batches and stored. ``cache=None`` encodes and reads everything.

    Returns:
        ``states`` ``(rows, len(layers), d)`` float32, ``prompt`` ``(rows,)``, ``end`` ``(rows,)`` as
        :func:`~latent_guardrail.activations.extract_end_states` (rows in input order), and the encodings.
    """
    def read(encodings: list[PromptEncoding]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return extract_end_states(model, encodings, layers, pad_token_id=pad_token_id, batch_size=batch_size,
                                  layer_template=layer_template, max_ends=max_ends, progress=progress)

    if cache is None:
        encodings = encode(prompts)
        return (*read(encodings), encodings)
    keys = [state_key(identity, layer_template, layers, "clause_ends", max_ends, p) for p in prompts]
    found = [cache.get(key, layers=len(layers), max_ends=max_ends) for key in keys]
    stored = {i: entry[1] for i, entry in enumerate(found) if entry is not None}
    hits = list(stored)
    if hits and check > 0:
        sample = hits[:: max(1, len(hits) // check)][:check]
        if any(fresh != stored[i] for i, fresh in zip(sample, encode([prompts[i] for i in sample]), strict=True)):
            warnings.warn("stored encodings differ from today's (the encoding changed): re-encoding the cached "
                          "prompts and reading those that differ again", StateCacheWarning, stacklevel=2)
            for i, fresh in zip(hits, encode([prompts[i] for i in hits]), strict=True):
                entry = found[i]
                if entry is not None and fresh != entry[1]:
                    found[i] = None
    missing = [i for i, entry in enumerate(found) if entry is None]
    for start in range(0, len(missing), _CHUNK):    # stored chunk by chunk: an interrupted fill keeps its work
        chunk = missing[start:start + _CHUNK]
        new = encode([prompts[i] for i in chunk])
        states, prompt, _ = read(new)
        for local, (index, encoding) in enumerate(zip(chunk, new, strict=True)):
            rows = states[prompt == local]
            found[index] = (rows, encoding)
            cache.put(keys[index], rows, encoding)
    if missing:
        cache.prune()
    parts = [entry for entry in found if entry is not None]
    encodings = [encoding for _, encoding in parts]
    prompt_of = torch.cat([torch.full((s.shape[0],), i, dtype=torch.long) for i, (s, _) in enumerate(parts)])
    end_of = torch.cat([torch.arange(s.shape[0]) + (len(e.ends) - s.shape[0]) for s, e in parts])
    return torch.cat([s for s, _ in parts]), prompt_of, end_of, encodings
