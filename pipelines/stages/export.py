"""Export stage: the backbone as a ``torch.export`` program, ONNX and safetensors, with a card.

The ONNX file is run with onnxruntime and compared with torch before anything is published;
a mismatch fails the stage and leaves no files behind. This module is the stage's config;
running it is ``pipelines/models/export.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import did_you_mean
from ..models.registry import ModelRegistry
from .base import MachineProblem, SpecMistake, StageConfig, folder_problem
from .probe import ProbeConfig


class PromoteConfig(BaseModel):
    """Publish the export in a model registry if it is not worse than the promoted model."""

    model_config = ConfigDict(extra="forbid")

    registry: str = Field(description="registry folder (see pipelines/models/registry.py)")
    metric: str = Field(
        "probe.top1",
        pattern=r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_@]+$",
        description="<probe stage>.<key of its metrics.json>",
    )
    min_delta: float = Field(
        0.0, description="promote if metric >= promoted metric + min_delta (metric units)"
    )


class ExportConfig(StageConfig):
    inputs: ClassVar[dict[str, str]] = {"model": "pretrain", "probe": "probe"}

    type: Literal["export"]
    model: str = Field(description="name of the pretrain stage to export")
    probe: str | None = Field(None, description="probe stage whose metrics go on the card")
    include_projector: bool = Field(False, description="export backbone + the method's head")
    opset: int = Field(18, ge=18)
    check_batch_size: int = Field(3, gt=0, description="batch used for the onnxruntime check")
    promote: PromoteConfig | None = None

    @model_validator(mode="after")
    def _promotion_metric_is_probed(self) -> ExportConfig:
        if self.promote is not None:
            stage = self.promote.metric.split(".")[0]
            if stage != self.probe:
                raise ValueError(
                    f"promote.metric {self.promote.metric!r} must name this export's probe "
                    f"stage (probe: {self.probe})"
                )
        return self

    def reference_problems(self, stages: Mapping[str, StageConfig]) -> list[SpecMistake]:
        probe = stages.get(self.probe or "")
        if self.promote is None or not isinstance(probe, ProbeConfig):
            return []
        key, names = self.promote.metric.split(".", 1)[1], probe.metric_names()
        if key in names:
            return []
        message = (
            f"probe stage {self.probe!r} writes no metric {key!r}{did_you_mean(key, names)} "
            f"(its metrics: {', '.join(names)})"
        )
        return [(("promote", "metric"), message)]

    def machine_problems(self) -> list[MachineProblem]:
        if self.promote is None:
            return []
        registry, field = Path(self.promote.registry), ("promote", "registry")
        if (
            registry.exists()
            and any(registry.iterdir())
            and not ModelRegistry(registry).is_registry()
        ):
            message = f"{registry} is not a model registry (no versions, latest or history)"
            return [MachineProblem(field, message, 2)]
        found = folder_problem(registry, field, "registry")
        return [found] if found else []
