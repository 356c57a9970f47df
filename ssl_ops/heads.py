"""Heads by kind: what a method puts after its backbone, rebuilt from plain data.

A method builds its head with ``SSLMethod.build_head(kind, **kwargs)``; the pretrain stage
writes the ``HeadSpec`` (kind and JSON-able keyword arguments) into ``model.json``, so that a
checkpoint's encoder (backbone then head) is rebuilt without the method's code path:
``HEADS[kind](**kwargs)``. A method file registers its own head classes::

    @register_head("my_head")
    class MyHead(nn.Module): ...

A head whose class sets ``takes_tokens = True`` is fed the backbone's ``Tokens``
(``ViT.forward_tokens``) instead of its pooled features (a decoder of patch tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from .backbones import mlp

HeadBuilder = Callable[..., nn.Module]
B = TypeVar("B", bound=HeadBuilder)

HEADS: dict[str, HeadBuilder] = {"mlp": mlp}


def register_head(kind: str) -> Callable[[B], B]:
    """Class (or builder function) decorator: ``HEADS[kind] = it``."""

    def register(builder: B) -> B:
        if HEADS.get(kind, builder) is not builder:
            raise ValueError(f"head kind {kind!r} is already registered ({HEADS[kind]})")
        HEADS[kind] = builder
        return builder

    return register


@dataclass(frozen=True)
class HeadSpec:
    """How to rebuild a head: ``HEADS[kind](**kwargs)``."""

    kind: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self, **overrides: Any) -> nn.Module:
        if self.kind not in HEADS:
            raise KeyError(
                f"unknown head kind {self.kind!r}; registered: {sorted(HEADS)} (is the "
                "method's module imported?)"
            )
        return HEADS[self.kind](**{**self.kwargs, **overrides})


class Encoder(nn.Sequential):
    """Backbone then head (``state_dict`` keys ``0.*`` and ``1.*``): images → head output."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        backbone, head = self
        if getattr(head, "takes_tokens", False):
            return head(backbone.forward_tokens(images))
        return head(backbone(images))
