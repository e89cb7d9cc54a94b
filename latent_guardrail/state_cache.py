"""A content-addressed, size-bounded cache of extracted hidden states, one safetensors file per prompt.

Extending a guard (:mod:`latent_guardrail.extend`) refits on the base guard's calibration prompts plus the new
ones; reading the base prompts' states again would take minutes on a CPU, so the states at every clause end are
kept here the first time they are read. An entry holds one prompt's clause-end states ``(ends, layers, d)``
(float32) and the prompt's encoding (token ids, clause ends; JSON in the file's metadata), and is keyed by a
SHA-256 of everything that decides them (:func:`state_key`): an identity (the host fingerprint — weights,
tokenizer, chat template, system prompt — and the guard settings that shape the encoding, :data:`_SHAPING`), the
layer template and layers, the view, the most ends kept, and the text as judged (normalised). A changed text,
host, encoding setting or layer set is simply another key; a hit needs neither the model nor the tokenizer.

- **Stale encodings**: each lookup re-encodes a few hits (``check``) and compares them with the stored
  encodings; when one differs (the encoding code changed), every hit is re-encoded and those that differ are
  read again (with a :class:`StateCacheWarning`).
- **Bundles**: a lookup of many prompts also stores each full run of 1,024 of them (in lookup order) as one
  file, keyed by the run's keys; the next lookup of the same run reads one file instead of 1,024 (the base of an
  extension is the same every time, only the last run holds the new prompts).
- **Misses** are read by :func:`read_end_states`: the first tokens all prompts share (the chat template's system
  turn) once, as a KV cache every batch continues from, and no token after a prompt's last clause end — about
  half the tokens of short prompts; the same states as the plain pass to float rounding (checked on two prompts
  the first time a model is seen).

- **Layout**: ``<root>/<first two hex digits>/<key>.safetensors`` and ``<root>/bundles/<run key>.safetensors``;
  root ``cache_root()/states`` by default (``$LATENT_GUARDRAIL_CACHE``), or the folder given.
- **Concurrent writers**: an entry is written to a temporary file in its own folder and renamed into place
  (``os.replace``, atomic on one file system), so a reader sees a whole entry or none, and two writers of one key
  leave one whole file (both wrote the same states).
- **Corrupt entry or bundle** (unreadable, not finite, or its stored key or shape does not match): a
  :class:`StateCacheWarning` names it, it is deleted and the states are read again (from the entries, for a
  bundle). A failure is never cached: only finite states are written.
- **Bounded**: after a write the total size (bundles included) is kept under ``max_bytes``
  (``$LATENT_GUARDRAIL_STATE_CACHE_MB``, default 2048 MB) by deleting the least recently used files (a hit
  refreshes a file's time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import TypeAdapter
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .activations import extract_end_states, run_capture
from .batching import plan_batches
from .decoding import cache_argument
from .hosts import cache_root
from .positions import Prompt, PromptEncoding
from .settings import GuardSettings

__all__ = ["CacheStats", "StateCache", "StateCacheWarning", "cached_end_states", "encoding_identity",
           "read_end_states", "state_key",
           "DEFAULT_MAX_BYTES", "FORMAT"]

FORMAT = "latent-guardrail/states/2"
DEFAULT_MAX_BYTES = 2048 * 1024 * 1024
_SUFFIX = ".safetensors"
_CHUNK = 512
_BUNDLE = 1024
_BUNDLES = "bundles"
_ENCODINGS = TypeAdapter(list[PromptEncoding])
_MIN_PREFIX = 8
_PREFIX_TOLERANCE = 1e-3
logger = logging.getLogger(__name__)
_KEY = re.compile(r"[0-9a-f]{64}")


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


_SHAPING = ("system_prompt", "max_tokens", "max_chars", "normalize", "case_fold", "close_sentences", "layer_template")
"""The guard settings that decide how a prompt is encoded and read (the others decide verdicts, or add readings
that calibration does not read)."""


def encoding_identity(fingerprint: str, settings: GuardSettings) -> str:
    """What besides the text decides a prompt's encoding and states: the host fingerprint and the settings of
    :data:`_SHAPING`. A setting added later does not change the keys unless it is listed there; should it change
    the encoding anyway, the re-encoded sample of every lookup (``check`` in :func:`cached_end_states`) catches it."""
    shaping = {name: getattr(settings, name) for name in _SHAPING}
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
        if not _KEY.fullmatch(key):
            raise ValueError(f"a state key is 64 lower-case hex digits, got {key!r}")
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    def get(self, key: str, *, layers: int | None = None, max_ends: int | None = None
            ) -> tuple[torch.Tensor, PromptEncoding] | None:
        """The states ``(ends, layers, d)`` and the encoding stored under ``key``, or None (a miss; a corrupt entry
        is deleted with a :class:`StateCacheWarning`). ``layers``: the layer count expected; ``max_ends``: at most
        this many ends were kept."""
        return self.get_many([key], layers=layers, max_ends=max_ends)[0]

    def get_many(self, keys: Sequence[str], *, layers: int | None = None, max_ends: int | None = None
                 ) -> list[tuple[torch.Tensor, PromptEncoding] | None]:
        """:meth:`get` of every key, with the finiteness of all the states found checked at once."""
        found: list[tuple[torch.Tensor, PromptEncoding] | None] = []
        for key in keys:
            path = self.path(key)
            entry = _read_entry(path, key, layers, max_ends)
            if isinstance(entry, str):
                self._corrupt(path, entry)
                entry = None
            found.append(entry)
        flat = [entry[0].flatten() for entry in found if entry is not None]
        if flat and not bool(torch.isfinite(torch.cat(flat)).all()):
            for i, entry in enumerate(found):
                if entry is not None and not bool(torch.isfinite(entry[0]).all()):
                    self._corrupt(self.path(keys[i]), "its states are not finite")
                    found[i] = None
        hits = 0
        for key, entry in zip(keys, found, strict=True):
            if entry is None:
                continue
            hits += 1
            try:
                os.utime(self.path(key))  # least-recently-used order
            except OSError:
                pass
        with self._lock:
            self.stats.hits += hits
        return found

    def _corrupt(self, path: Path, problem: str) -> None:
        warnings.warn(f"state cache entry {path} is corrupt ({problem}); it is deleted and recomputed",
                      StateCacheWarning, stacklevel=3)
        with self._lock:
            self.stats.corrupt += 1
        path.unlink(missing_ok=True)

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
        """Every entry file, bundles included (no temporary files)."""
        if not self.root.is_dir():
            return []
        return [p for pattern in (f"??/*{_SUFFIX}", f"{_BUNDLES}/*{_SUFFIX}") for p in self.root.glob(pattern)
                if not p.name.startswith(".")]

    def bundle_path(self, keys: Sequence[str]) -> Path:
        """Where the bundle of ``keys`` (in that order) lives."""
        return self.root / _BUNDLES / f"{_bundle_key(keys)}{_SUFFIX}"

    def get_bundle(self, keys: Sequence[str], *, layers: int | None = None, max_ends: int | None = None
                   ) -> list[tuple[torch.Tensor, PromptEncoding]] | None:
        """The entries of ``keys`` from their bundle (one file), or None when there is none; a corrupt bundle is
        deleted with a :class:`StateCacheWarning` (its entries are then read one by one)."""
        path = self.bundle_path(keys)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        read = _read_bundle(data, _bundle_key(keys), len(keys), layers, max_ends)
        if isinstance(read, str):
            self._corrupt(path, read)
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        with self._lock:
            self.stats.hits += len(keys)
        return read

    def put_bundle(self, keys: Sequence[str], entries: Sequence[tuple[torch.Tensor, PromptEncoding]]) -> Path:
        """Store the entries of ``keys`` as one bundle (atomically): what a later lookup of the same keys reads in
        one go instead of one file per prompt."""
        if len(keys) != len(entries):
            raise ValueError(f"{len(keys)} keys for {len(entries)} entries")
        path = self.bundle_path(keys)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = b"[" + b",".join(e.model_dump_json().encode() for _, e in entries) + b"]"
        tensors = {"states": torch.cat([s.detach().to("cpu", torch.float32) for s, _ in entries]).contiguous(),
                   "counts": torch.tensor([s.shape[0] for s, _ in entries], dtype=torch.long),
                   "encodings": torch.frombuffer(bytearray(raw), dtype=torch.uint8)}
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bundle-", suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, tmp, metadata={"key": _bundle_key(keys), "format": FORMAT})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

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


def _bundle_key(keys: Sequence[str]) -> str:
    """The content address of a bundle: SHA-256 hex of its keys in order."""
    digest = hashlib.sha256(f"{FORMAT}/bundle".encode())
    for key in keys:
        digest.update(key.encode())
    return digest.hexdigest()


def _read_bundle(data: bytes, key: str, count: int, layers: int | None, max_ends: int | None
                 ) -> list[tuple[torch.Tensor, PromptEncoding]] | str:
    """The entries of a bundle file's bytes, or what is wrong with it."""
    try:
        tensors = load_bytes(data)
        meta = _metadata(data)
        states, counts, raw = tensors.get("states"), tensors.get("counts"), tensors.get("encodings")
        if states is None or counts is None or raw is None or meta.get("key") != key or meta.get("format") != FORMAT:
            return "its stored key or format does not match"
        encodings = _ENCODINGS.validate_json(raw.numpy().tobytes())
        widths = [max(1, len(e.ends[-max_ends:] if max_ends else e.ends)) for e in encodings]
        if len(encodings) != count or counts.tolist() != widths or states.dim() != 3 \
                or states.shape[0] != sum(widths) or (layers is not None and states.shape[1] != layers):
            return f"its states have shape {tuple(states.shape)} for {len(encodings)} prompts"
        if not bool(torch.isfinite(states).all()):
            return "its states are not finite"
    except (SafetensorError, ValueError, RuntimeError, OSError, json.JSONDecodeError) as exc:
        return f"it cannot be read ({type(exc).__name__}: {exc})"
    return list(zip(torch.split(states, widths), encodings, strict=True))


def _read_entry(path: Path, key: str, layers: int | None, max_ends: int | None
                ) -> tuple[torch.Tensor, PromptEncoding] | str | None:
    """The entry at ``path``: its states and encoding, None when there is none, or what is wrong with it (its
    states' finiteness is checked by the caller)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    try:
        states = load_bytes(data).get("states")
        meta = _metadata(data)
        if states is None or meta.get("key") != key or meta.get("format") != FORMAT:
            return "its stored key or format does not match"
        encoding = PromptEncoding.model_validate_json(meta.get("encoding", "null"))
        width = max(1, len(encoding.ends[-max_ends:] if max_ends else encoding.ends))
        if states.dim() != 3 or states.shape[0] != width or (layers is not None and states.shape[1] != layers):
            return f"its states have shape {tuple(states.shape)}"
    except (SafetensorError, ValueError, RuntimeError, OSError, json.JSONDecodeError) as exc:
        return f"it cannot be read ({type(exc).__name__}: {exc})"
    return states, encoding


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


# ----------------------------------------------------------------------------------------------- reading misses

_prefix_works: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def _shared_prefix(encodings: Sequence[PromptEncoding], kept: Sequence[Sequence[int]]) -> int:
    """How many first tokens every encoding shares, ending before every kept end (0 when a prompt has none)."""
    if any(not ends for ends in kept):
        return 0
    first = encodings[0].input_ids
    length = min(min(ends) for ends in kept)
    for encoding in encodings[1:]:
        ids = encoding.input_ids
        same = 0
        while same < length and ids[same] == first[same]:
            same += 1
        length = same
    return length


def _prefix_cache(model: torch.nn.Module, ids: Sequence[int], layers: Sequence[int], layer_template: str | None
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values ``(1, heads, len(ids), head_dim)`` of ``ids`` in every block before the last layer read
    (the pass stops there, as the suffix passes do)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=getattr(model, "config", None))
    tokens = torch.tensor([list(ids)], dtype=torch.long)
    run_capture(model, tokens, torch.ones_like(tokens), [max(layers)], torch.zeros(1, 1, dtype=torch.long),
                layer_template=layer_template, kv_cache=(cache_argument(model), cache))
    return [(getattr(layer, "keys"), getattr(layer, "values")) for layer in cache.layers  # noqa: B009
            if getattr(layer, "is_initialized", False)]


def _read_after_prefix(model: torch.nn.Module, encodings: Sequence[PromptEncoding], kept: Sequence[Sequence[int]],
                       prefix: int, layers: Sequence[int], *, pad_token_id: int, batch_size: int,
                       layer_template: str | None, progress: bool | str) -> list[torch.Tensor]:
    """Per prompt, its kept ends' states ``(ends, len(layers), d)``: the shared first ``prefix`` tokens read once
    (their KV cache reused by every batch), each prompt read from there up to its last kept end (a causal model's
    states there do not depend on later tokens), batched by length with padding between prefix and rest."""
    from transformers import DynamicCache

    past = _prefix_cache(model, encodings[0].input_ids[:prefix], layers, layer_template)
    rests = [list(e.input_ids[prefix:max(k) + 1]) for e, k in zip(encodings, kept, strict=True)]
    out: list[torch.Tensor | None] = [None] * len(encodings)
    label = progress if isinstance(progress, str) else "reading clause ends"
    for chunk in tqdm(plan_batches([len(r) for r in rests], batch_size), desc=label, disable=not progress,
                      unit="batch"):
        seq = max(len(rests[i]) for i in chunk)
        width = max(len(kept[i]) for i in chunk)
        ids = torch.full((len(chunk), seq), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), prefix + seq), dtype=torch.long)
        mask[:, :prefix] = 1
        positions = torch.empty((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            start = seq - len(rests[i])
            ids[row, start:] = torch.tensor(rests[i], dtype=torch.long)
            mask[row, prefix + start:] = 1
            own = list(kept[i])
            positions[row] = torch.tensor([own[0]] * (width - len(own)) + own) - prefix + start
        cache = DynamicCache(config=getattr(model, "config", None))
        for index, (keys, values) in enumerate(past):
            cache.update(keys.expand(len(chunk), -1, -1, -1), values.expand(len(chunk), -1, -1, -1), index)
        stacked = run_capture(model, ids, mask, layers, positions, layer_template=layer_template,
                              kv_cache=(cache_argument(model), cache)).stacked()        # (batch, width, L, d)
        for row, i in enumerate(chunk):
            out[i] = stacked[row, width - len(kept[i]):]
    return [s for s in out if s is not None]


def read_end_states(model: torch.nn.Module, encodings: Sequence[PromptEncoding], layers: Sequence[int], *,
                    pad_token_id: int, batch_size: int = 16, layer_template: str | None = None,
                    max_ends: int | None = None, progress: bool | str = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~latent_guardrail.activations.extract_end_states` (same returns, same states to float rounding),
    reading the first tokens all prompts share — the chat template's system turn, about half of a short prompt —
    once instead of once per prompt, and no token after a prompt's last kept end.

    The first time a model is seen, two prompts are read both ways and compared (relative difference at most
    ``1e-3``); a model whose KV cache does not reproduce the plain pass, or prompts sharing fewer than 8 tokens,
    are read by the plain pass.
    """
    kept = [list(e.ends)[-max_ends:] if max_ends else list(e.ends) for e in encodings]
    prefix = _shared_prefix(encodings, kept)

    def plain(chosen: Sequence[PromptEncoding], show: bool | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return extract_end_states(model, chosen, layers, pad_token_id=pad_token_id, batch_size=batch_size,
                                  layer_template=layer_template, max_ends=max_ends, progress=show)

    if prefix < _MIN_PREFIX or len(encodings) < 2:
        return plain(encodings, progress)
    if model not in _prefix_works:
        sample = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))[:2]
        want = plain([encodings[i] for i in sample], False)[0]
        try:
            got = torch.cat(_read_after_prefix(model, [encodings[i] for i in sample], [kept[i] for i in sample],
                                               prefix, layers, pad_token_id=pad_token_id, batch_size=batch_size,
                                               layer_template=layer_template, progress=False))
            works = got.shape == want.shape and bool(
                (got - want).abs().max() <= _PREFIX_TOLERANCE * want.abs().max().clamp(min=1e-6))
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            logger.info("reading a shared prefix once fails on %s (%s): plain passes", type(model).__name__, exc)
            works = False
        _prefix_works[model] = works
        if not works:
            logger.info("the KV cache of %s does not reproduce the plain pass: plain passes", type(model).__name__)
    if not _prefix_works[model]:
        return plain(encodings, progress)
    parts = _read_after_prefix(model, encodings, kept, prefix, layers, pad_token_id=pad_token_id,
                               batch_size=batch_size, layer_template=layer_template, progress=progress)
    prompt = torch.cat([torch.full((p.shape[0],), i, dtype=torch.long) for i, p in enumerate(parts)])
    end = torch.cat([torch.arange(p.shape[0]) + (len(encodings[i].ends) - p.shape[0]) for i, p in enumerate(parts)])
    return torch.cat(parts), prompt, end


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
        return read_end_states(model, encodings, layers, pad_token_id=pad_token_id, batch_size=batch_size,
                               layer_template=layer_template, max_ends=max_ends, progress=progress)

    if cache is None:
        encodings = encode(prompts)
        return (*read(encodings), encodings)
    keys = [state_key(identity, layer_template, layers, "clause_ends", max_ends, p) for p in prompts]
    found: list[tuple[torch.Tensor, PromptEncoding] | None] = [None] * len(prompts)
    bundles = [range(start, start + _BUNDLE) for start in range(0, len(prompts) - _BUNDLE + 1, _BUNDLE)]
    bundled: set[int] = set()                       # the full runs of _BUNDLE prompts found as one bundle
    for run in bundles:
        got = cache.get_bundle([keys[i] for i in run], layers=len(layers), max_ends=max_ends)
        if got is not None:
            found[run.start:run.stop] = got
            bundled.add(run.start)
    rest = [i for i, entry in enumerate(found) if entry is None]
    for i, entry in zip(rest, cache.get_many([keys[i] for i in rest], layers=len(layers), max_ends=max_ends),
                        strict=True):
        found[i] = entry
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
                    bundled.discard(i - i % _BUNDLE)
    missing = [i for i, entry in enumerate(found) if entry is None]
    for start in range(0, len(missing), _CHUNK):    # stored chunk by chunk: an interrupted fill keeps its work
        chunk = missing[start:start + _CHUNK]
        new = encode([prompts[i] for i in chunk])
        states, prompt, _ = read(new)
        for local, (index, encoding) in enumerate(zip(chunk, new, strict=True)):
            rows = states[prompt == local]
            found[index] = (rows, encoding)
            cache.put(keys[index], rows, encoding)
    for run in bundles:                             # next time, each full run is one file
        if run.start not in bundled:
            cache.put_bundle([keys[i] for i in run], [entry for entry in found[run.start:run.stop]
                                                     if entry is not None])
    if missing or len(bundled) < len(bundles):
        cache.prune()
    parts = [entry for entry in found if entry is not None]
    encodings = [encoding for _, encoding in parts]
    prompt_of = torch.cat([torch.full((s.shape[0],), i, dtype=torch.long) for i, (s, _) in enumerate(parts)])
    end_of = torch.cat([torch.arange(s.shape[0]) + (len(e.ends) - s.shape[0]) for s, e in parts])
    return torch.cat([s for s, _ in parts]), prompt_of, end_of, encodings
