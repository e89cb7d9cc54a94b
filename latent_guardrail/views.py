"""Views: what the guard reads from the residual stream of one prompt, and where it sits.

A :class:`View` names one reading of a prompt's states at a layer and says how it is located on a
:class:`~latent_guardrail.positions.PaddedBatch`:

- a **point** view is the state of one token (``t_inst``: the last token of the last user message;
  ``t_post_inst``: the last prompt token);
- a **span** view is the mean of the states over an inclusive token span (``content_mean``: the last user
  message's content tokens ``[t_content_start, t_inst]``).

Every layer of the package — extraction, the guarded prefill, calibration, evaluation, distributed workers,
the scorers and the artifact (which stores each view's :meth:`View.spec` and checks it on load) — takes views
from :data:`VIEWS`, never names plus index slicing. Adding a view is one new entry here.

A capture records the point views first, then the span views (:class:`ViewLayout`); ``t_inst`` is read when
no point view is asked, because a capture needs at least one point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch

from .positions import PaddedBatch

__all__ = ["View", "ViewKind", "ViewLayout", "VIEWS", "POINT_VIEWS", "SPAN_VIEWS", "get_view", "resolve_views",
           "select_views", "view_names"]

ViewKind = Literal["point", "span"]


@dataclass(frozen=True)
class View:
    """One reading of a prompt's states per layer.

    Attributes:
        name: registry key, stored in artifacts and verdicts.
        kind: ``"point"`` (one token) or ``"span"`` (mean over an inclusive token span).
        rule: how the tokens are found, in words (stored in an artifact and compared on load).
        locate: padded batch → ``(batch,)`` token indices (point) or ``(batch, 2)`` inclusive ``[start, end]``
            (span), in padded coordinates.
    """

    name: str
    kind: ViewKind
    rule: str
    locate: Callable[[PaddedBatch], torch.Tensor]

    def spec(self) -> dict[str, str]:
        """What an artifact stores about this view."""
        return {"name": self.name, "kind": self.kind, "rule": self.rule}


def _t_inst(batch: PaddedBatch) -> torch.Tensor:
    return batch.t_inst


def _t_post_inst(batch: PaddedBatch) -> torch.Tensor:
    return batch.t_post_inst


def _content(batch: PaddedBatch) -> torch.Tensor:
    return torch.stack([batch.t_content_start, batch.t_inst], dim=-1)


VIEWS: Mapping[str, View] = MappingProxyType({
    "t_inst": View("t_inst", "point", "last token of the last user message's content (sentinel + offsets)", _t_inst),
    "t_post_inst": View("t_post_inst", "point", "last prompt token, generation prompt included", _t_post_inst),
    "content_mean": View("content_mean", "span",
                         "mean over the last user message's content tokens [t_content_start, t_inst]", _content),
})
"""The registry of views, by name (read-only)."""

POINT_VIEWS: tuple[str, ...] = tuple(name for name, view in VIEWS.items() if view.kind == "point")
SPAN_VIEWS: tuple[str, ...] = tuple(name for name, view in VIEWS.items() if view.kind == "span")


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


def select_views(states: torch.Tensor, have: Sequence[str | View], want: Sequence[str | View]) -> torch.Tensor:
    """The slices of ``states`` ``(n, len(have), ...)`` for the views ``want``: ``(n, len(want), ...)``.

    Raises:
        ValueError: a wanted view is not among ``have``, or the view axis does not match ``have``.
    """
    names = list(view_names(have))
    if states.dim() < 2 or states.shape[1] != len(names):
        raise ValueError(f"states of shape {tuple(states.shape)} do not hold the {len(names)} views {names}")
    index = []
    for view in view_names(want):
        if view not in names:
            raise ValueError(f"view {view!r} was not read; the states hold {names}")
        index.append(names.index(view))
    return states[:, index]


@dataclass(frozen=True)
class ViewLayout:
    """How views map onto one capture: its point slots, its span slots and each view's slot.

    Attributes:
        views: the views asked for, in order.
        points: the point views captured (``t_inst`` when none was asked).
        spans: the span views captured.
        order: for each asked view, its index among the capture's slots (points first, then spans).
    """

    views: tuple[View, ...]
    points: tuple[View, ...]
    spans: tuple[View, ...]
    order: tuple[int, ...]

    @classmethod
    def of(cls, views: Sequence[str | View]) -> ViewLayout:
        """The layout that reads ``views``."""
        asked = resolve_views(views)
        points = tuple(view for view in asked if view.kind == "point") or (VIEWS["t_inst"],)
        spans = tuple(view for view in asked if view.kind == "span")
        slots = [view.name for view in (*points, *spans)]
        return cls(asked, points, spans, tuple(slots.index(view.name) for view in asked))

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the asked views."""
        return tuple(view.name for view in self.views)

    def locate(self, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token positions ``(batch, points)`` and inclusive spans ``(batch, spans, 2)`` (or None) to capture."""
        positions = torch.stack([view.locate(batch) for view in self.points], dim=1)
        spans = torch.stack([view.locate(batch) for view in self.spans], dim=1) if self.spans else None
        return positions, spans
