"""The files each stage publishes in ``<workdir>/<stage>/``, named once for every reader.

The ingest stage's files are named by the datasets layer that writes them
(``sslpipe.datasets.layout``); they are re-exported here so that pipelines code has one place
to look.
"""

from __future__ import annotations

from sslpipe.datasets.layout import MANIFEST, REJECTED

# pretrain
BACKBONE_WEIGHTS = "backbone.pt"  # the trained backbone's state dict (torch.save)
ENCODER_WEIGHTS = "encoder.pt"  # backbone + projector, as trained (written once, at the end)
MODEL_DESCRIPTION = "model.json"  # what the weights are: ``ModelDescription``
HISTORY = "history.jsonl"  # one record per optimizer step
PRETRAIN_FILES = (BACKBONE_WEIGHTS, ENCODER_WEIGHTS, MODEL_DESCRIPTION, HISTORY)

# probe
METRICS = "metrics.json"
CONFUSION = "confusion.json"

# export
TORCH_PROGRAM = "model.pt2"
ONNX_MODEL = "model.onnx"
SAFETENSORS_WEIGHTS = "backbone.safetensors"
MODEL_CARD = "model_card.json"

__all__ = [
    "BACKBONE_WEIGHTS",
    "CONFUSION",
    "ENCODER_WEIGHTS",
    "HISTORY",
    "MANIFEST",
    "METRICS",
    "MODEL_CARD",
    "MODEL_DESCRIPTION",
    "ONNX_MODEL",
    "PRETRAIN_FILES",
    "REJECTED",
    "SAFETENSORS_WEIGHTS",
    "TORCH_PROGRAM",
]
