"""Third-party additions, found only through installed entry points (never named in YAML).

A package adds to sslpipe by declaring, in its ``pyproject.toml``::

    [project.entry-points."sslpipe.stages"]
    my_stage = "my_package.stage:STAGE_TYPE"     # a StageType (config model + run function)

    [project.entry-points."sslpipe.methods"]
    my_method = "my_package.method:CARD"         # an ssl_ops.catalog.MethodCard

    [project.entry-points."sslpipe.backbones"]
    my_net = "my_package.nets:build_my_net"      # a backbone builder, as in ssl_ops.BACKBONES

The entry point's name is the name specs use. A plugin cannot replace a built-in.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def add_plugins(group: str, registry: dict[str, T]) -> dict[str, T]:
    """``registry`` with the entry points of ``group`` added (in place, and returned)."""
    for entry_point in entry_points(group=group):
        if entry_point.name in registry:
            raise UserError(
                f"entry point {entry_point.name!r} of {group} ({entry_point.value}) would "
                "replace a built-in; give it another name"
            )
        plugin: Any = entry_point.load()
        registry[entry_point.name] = plugin
    return registry


def plugin_names(group: str) -> list[str]:
    """The names the entry points of ``group`` declare, without importing them."""
    return [entry_point.name for entry_point in entry_points(group=group)]
