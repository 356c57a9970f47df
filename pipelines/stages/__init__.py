"""The stage types a spec can use, by name: each has a config model and a run function.

Installed packages add stage types through the ``sslpipe.stages`` entry point group.
"""

from ..plugins import add_plugins
from . import export, ingest, pretrain, probe
from .base import StageConfig, StageContext, StageType

STAGE_TYPES: dict[str, StageType] = {
    "ingest": StageType(ingest.IngestConfig, ingest.run, outputs=("manifest.json",)),
    "pretrain": StageType(pretrain.PretrainConfig, pretrain.run, outputs=("backbone.pt",)),
    "probe": StageType(probe.ProbeConfig, probe.run, outputs=("metrics.json",)),
    "export": StageType(
        export.ExportConfig, export.run, outputs=("model.onnx", "model.pt2", "model_card.json")
    ),
}
add_plugins("sslpipe.stages", STAGE_TYPES)

__all__ = ["STAGE_TYPES", "StageConfig", "StageContext", "StageType"]
