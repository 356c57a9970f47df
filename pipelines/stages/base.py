"""What every stage type shares: its config base class and the context it runs in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class StageConfig(BaseModel):
    """Base of every stage's spec entry.

    ``inputs`` maps a field holding an upstream stage name to the stage type it must name;
    the pipeline checks those references and orders the stages by them.
    """

    model_config = ConfigDict(extra="forbid")
    inputs: ClassVar[dict[str, str]] = {}

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="stage name and folder name")

    def upstream(self) -> dict[str, str]:
        """Field name → upstream stage name, for the references that are set."""
        return {f: getattr(self, f) for f in self.inputs if getattr(self, f) is not None}


@dataclass
class StageContext:
    """Where a stage writes (``out_dir``, renamed into place on success) and what it reads."""

    out_dir: Path
    inputs: dict[str, Path]
    workdir: Path
    run_id: str


@dataclass(frozen=True)
class StageType:
    config: type[StageConfig]
    run: Callable[[Any, StageContext], dict[str, Any]]
    outputs: tuple[str, ...] = ()  # the headline files, shown in the run summary
