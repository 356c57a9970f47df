"""Third-party additions, found only through installed entry points (never named in YAML).

A package adds to sslpipe by declaring, in its ``pyproject.toml``::

    [project.entry-points."sslpipe.stages"]
    my_stage = "my_package.stage:STAGE_TYPE"     # a StageType (config model + run function)

    [project.entry-points."sslpipe.methods"]
    my_method = "my_package.method:CARD"         # an ssl_ops.catalog.MethodCard

    [project.entry-points."sslpipe.backbones"]
    my_net = "my_package.nets:build_my_net"      # a backbone builder, as in ssl_ops.BACKBONES

A backbone builder takes an ``ssl_ops.BackboneOptions`` and returns an ``ssl_ops.Backbone``
(images → N×feature_dim). A method's card names its model class (``"module:Class"``); that
module registers the method's head kinds (``ssl_ops.register_head``) when it is imported.

The entry point's name is the name specs use. A plugin cannot replace a built-in. Adding the
plugins again (any number of times in one process) changes nothing.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def add_plugins(group: str, registry: dict[str, T]) -> dict[str, T]:
    """``registry`` with the entry points of ``group`` added (in place, and returned); an
    entry point already added is left as it is."""
    for entry_point in entry_points(group=group):
        plugin: Any = entry_point.load()
        if registry.setdefault(entry_point.name, plugin) is not plugin:
            raise UserError(
                f"entry point {entry_point.name!r} of {group} ({entry_point.value}) would "
                "replace a built-in; give it another name"
            )
    return registry


def add_backbone_plugins() -> None:
    """The ``sslpipe.backbones`` entry points added to ``ssl_ops.BACKBONES`` (imports torch:
    call it where a backbone is built — training, probe, export, ``load_backbone``)."""
    from sslpipe.ssl_ops import BACKBONES

    add_plugins("sslpipe.backbones", BACKBONES)


def plugin_names(group: str) -> list[str]:
    """The names the entry points of ``group`` declare, without importing them."""
    return [entry_point.name for entry_point in entry_points(group=group)]
