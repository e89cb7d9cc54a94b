"""Views: what the guard reads from the residual stream of one prompt, and where it sits.

A :class:`View` names one reading of a prompt's states at a layer and says how it is located on a
:class:`~latent_guardrail.positions.PaddedBatch`:

- a **point** view is the state of one token (``t_inst``: the last token of the last user message;
  ``t_post_inst``: the last prompt token);
- a **span** view is the mean of the states over an inclusive token span (``content_mean``: the last user
  message's content tokens ``[t_content_start, t_inst]``);
- a **set** view is the states of a fixed number of tokens (``clause_ends``: the last
  :data:`MAX_CLAUSE_ENDS` clause ends of every user turn, see :mod:`latent_guardrail.segments`; a prompt with
  fewer repeats its first end, which leaves a max over them unchanged). A set view has ``width`` slots.

Every layer of the package — extraction, the guarded prefill, calibration, evaluation, distributed workers,
the scorers and the artifact (which stores each view's :meth:`View.spec` and checks it on load) — takes views
from :data:`VIEWS`, never names plus index slicing. Adding a view is one new entry here.

A capture records the point views first, then the slots of the set views, then the span views
(:class:`ViewLayout`); ``t_inst`` is read when no point or set view is asked, because a capture needs at least
one point. States of several views are laid out along one axis, each view taking ``width`` slots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch

from .positions import PaddedBatch

__all__ = ["View", "ViewKind", "ViewLayout", "VIEWS", "POINT_VIEWS", "SPAN_VIEWS", "get_view", "resolve_views",
           "select_views", "view_names", "slot_count", "MAX_CLAUSE_ENDS", "SET_VIEWS"]

ViewKind = Literal["point", "span", "set"]

MAX_CLAUSE_ENDS = 32
"""Slots of the ``clause_ends`` view: the last this many clause ends of the user's turns are read."""


@dataclass(frozen=True)
class View:
    """One reading of a prompt's states per layer.

    Attributes:
        name: registry key, stored in artifacts and verdicts.
        kind: ``"point"`` (one token), ``"span"`` (mean over an inclusive token span) or ``"set"`` (``width``
            tokens).
        rule: how the tokens are found, in words (stored in an artifact and compared on load).
        locate: padded batch → ``(batch,)`` token indices (point), ``(batch, 2)`` inclusive ``[start, end]``
            (span) or ``(batch, width)`` token indices (set), in padded coordinates.
        width: slots the view takes along the view axis (1 unless a set).
    """

    name: str
    kind: ViewKind
    rule: str
    locate: Callable[[PaddedBatch], torch.Tensor]
    width: int = 1

    def spec(self) -> dict[str, str]:
        """What an artifact stores about this view."""
        spec = {"name": self.name, "kind": self.kind, "rule": self.rule}
        return spec if self.kind != "set" else {**spec, "width": str(self.width)}


def _t_inst(batch: PaddedBatch) -> torch.Tensor:
    return batch.t_inst


def _t_post_inst(batch: PaddedBatch) -> torch.Tensor:
    return batch.t_post_inst


def _content(batch: PaddedBatch) -> torch.Tensor:
    return torch.stack([batch.t_content_start, batch.t_inst], dim=-1)


def _clause_ends(batch: PaddedBatch) -> torch.Tensor:
    ends = batch.ends if batch.ends is not None else batch.t_inst.unsqueeze(-1)
    if ends.shape[1] >= MAX_CLAUSE_ENDS:
        return ends[:, -MAX_CLAUSE_ENDS:]
    fill = ends[:, :1].expand(-1, MAX_CLAUSE_ENDS - ends.shape[1])
    return torch.cat([fill, ends], dim=1)


VIEWS: Mapping[str, View] = MappingProxyType({
    "t_inst": View("t_inst", "point", "last token of the last user message's content (sentinel + offsets)", _t_inst),
    "t_post_inst": View("t_post_inst", "point", "last prompt token, generation prompt included", _t_post_inst),
    "content_mean": View("content_mean", "span",
                         "mean over the last user message's content tokens [t_content_start, t_inst]", _content),
    "clause_ends": View("clause_ends", "set", "last token of every clause of every user turn (segments.clause_ends), "
                        "the last ones, first end repeated to fill", _clause_ends, width=MAX_CLAUSE_ENDS),
})
"""The registry of views, by name (read-only)."""

POINT_VIEWS: tuple[str, ...] = tuple(name for name, view in VIEWS.items() if view.kind == "point")
SPAN_VIEWS: tuple[str, ...] = tuple(name for name, view in VIEWS.items() if view.kind == "span")
SET_VIEWS: tuple[str, ...] = tuple(name for name, view in VIEWS.items() if view.kind == "set")


def get_view(view: str | View) -> View:
    """The registered view of that name (a :class:`View` is returned as is).

    Raises:
        ValueError: no such view.
    """
    if isinstance(view, View):
        return view
    found = VIEWS.get(view) if isinstance(view, str) else None
    if found is None:
        raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    return found


def resolve_views(views: Sequence[str | View]) -> tuple[View, ...]:
    """Views by name or object, validated, in the given order.

    Raises:
        ValueError: an unknown view, a repeated one, or none at all.
    """
    if isinstance(views, str):
        raise ValueError(f"views must be a sequence of view names, got the string {views!r}")
    out = tuple(get_view(view) for view in views)
    if not out:
        raise ValueError("at least one view is needed")
    names = [view.name for view in out]
    if len(set(names)) != len(names):
        raise ValueError(f"views repeat: {names}")
    return out


def view_names(views: Sequence[str | View]) -> tuple[str, ...]:
    """The names of ``views`` (validated)."""
    return tuple(view.name for view in resolve_views(views))


def slot_count(views: Sequence[str | View]) -> int:
    """Slots ``views`` take along the view axis (the sum of their widths)."""
    return sum(view.width for view in resolve_views(views))


def _slices(views: Sequence[str | View]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    at = 0
    for view in resolve_views(views):
        out[view.name] = list(range(at, at + view.width))
        at += view.width
    return out


def select_views(states: torch.Tensor, have: Sequence[str | View], want: Sequence[str | View]) -> torch.Tensor:
    """The slots of ``states`` ``(n, slots(have), ...)`` that hold the views ``want``: ``(n, slots(want), ...)``.

    Raises:
        ValueError: a wanted view is not among ``have``, or the view axis does not match ``have``.
    """
    slices = _slices(have)
    names = list(slices)
    if states.dim() < 2 or states.shape[1] != slot_count(have):
        raise ValueError(f"states of shape {tuple(states.shape)} do not hold the {len(names)} views {names}")
    index: list[int] = []
    for view in view_names(want):
        if view not in slices:
            raise ValueError(f"view {view!r} was not read; the states hold {names}")
        index += slices[view]
    return states[:, index]


@dataclass(frozen=True)
class ViewLayout:
    """How views map onto one capture: its point slots (point views, then the slots of set views), its span
    slots, and where each asked view's slots are.

    Attributes:
        views: the views asked for, in order.
        points: the point and set views captured (``t_inst`` when none was asked), in capture order.
        spans: the span views captured.
        order: for the asked views in order, the indices of their slots among the capture's (points and set
            slots first, then spans); the capture's states indexed by it are laid out as :func:`select_views`
            expects.
    """

    views: tuple[View, ...]
    points: tuple[View, ...]
    spans: tuple[View, ...]
    order: tuple[int, ...]

    @classmethod
    def of(cls, views: Sequence[str | View]) -> ViewLayout:
        """The layout that reads ``views``."""
        asked = resolve_views(views)
        points = tuple(view for view in asked if view.kind == "point")
        sets = tuple(view for view in asked if view.kind == "set")
        if not points and not sets:
            points = (VIEWS["t_inst"],)
        spans = tuple(view for view in asked if view.kind == "span")
        slots = _slices((*points, *sets, *spans))
        order = [index for view in asked for index in slots[view.name]]
        return cls(asked, (*points, *sets), spans, tuple(order))

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the asked views."""
        return tuple(view.name for view in self.views)

    def locate(self, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token positions ``(batch, point slots)`` and inclusive spans ``(batch, spans, 2)`` (or None)."""
        positions = torch.cat([view.locate(batch).reshape(batch.t_inst.shape[0], -1) for view in self.points],
                              dim=1)
        spans = torch.stack([view.locate(batch) for view in self.spans], dim=1) if self.spans else None
        return positions, spans
