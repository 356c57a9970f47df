"""The stage types a spec can use, by name: each has a config model and a run function.

The config models live here (``stages/<type>.py``) and import nothing heavy; the run
functions are named by import path and loaded only when a stage runs. Installed packages add
stage types through the ``sslpipe.stages`` entry point group.
"""

from ..plugins import add_plugins
from ..run import outputs
from . import export, ingest, pretrain, probe
from .base import StageConfig, StageContext, StageType

STAGE_TYPES: dict[str, StageType] = {
    "ingest": StageType(ingest.IngestConfig, ingest.run, outputs=(outputs.MANIFEST,)),
    "pretrain": StageType(
        pretrain.PretrainConfig,
        "sslpipe.pipelines.training.driver:run",
        outputs=(outputs.BACKBONE_WEIGHTS,),
    ),
    "probe": StageType(
        probe.ProbeConfig, "sslpipe.pipelines.probe.run:run_probe", outputs=(outputs.METRICS,)
    ),
    "export": StageType(
        export.ExportConfig,
        "sslpipe.pipelines.models.export:run",
        outputs=(outputs.ONNX_MODEL, outputs.TORCH_PROGRAM, outputs.MODEL_CARD),
    ),
}
add_plugins("sslpipe.stages", STAGE_TYPES)

__all__ = ["STAGE_TYPES", "StageConfig", "StageContext", "StageType"]
