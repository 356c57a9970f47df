"""A model registry on disk: numbered versions, an atomic ``latest`` pointer and a history.

Layout::

    <registry>/v0001/           an exported model (model.onnx, model.pt2, backbone.safetensors,
    <registry>/v0002/           model_card.json, promotion.json), never changed once written
    <registry>/latest -> v0002  symbolic link, replaced in one rename
    <registry>/history.jsonl    every decision, promoted or refused, and every rollback

A version folder is assembled under a temporary name and renamed into place, and ``latest``
is a new link renamed over the old one, so a reader sees the previous state or the next,
never a partial one (POSIX rename; on NFS the same holds per client).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..run.store import STATE_FILE, now, umask_permissions

LATEST = "latest"
HISTORY = "history.jsonl"
PROMOTION_FILE = "promotion.json"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    metric: str
    value: float
    previous_version: str | None
    previous_value: float | None
    version: str | None = None

    def __str__(self) -> str:
        verdict = f"promoted as {self.version}" if self.promoted else "not promoted"
        return f"{verdict}: {self.reason}"


class ModelRegistry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def is_registry(self) -> bool:
        """Whether ``root`` is a registry: a folder with versions, ``latest`` or a history."""
        return self.root.is_dir() and bool(
            self.versions() or (self.root / LATEST).is_symlink() or (self.root / HISTORY).exists()
        )

    def check(self) -> None:
        """Raise ``UsageError`` unless ``root`` is a registry (``registry show|rollback``)."""
        if not self.is_registry():
            what = "does not exist" if not self.root.exists() else "is not a model registry"
            raise UsageError(
                f"{self.root} {what}: a registry is an export stage's promote.registry folder, "
                "with vNNNN folders, latest and history.jsonl"
            )

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.glob("v[0-9][0-9][0-9][0-9]") if p.is_dir())

    def latest(self) -> Path | None:
        """The folder ``latest`` points at, or None before the first promotion."""
        link = self.root / LATEST
        return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None

    def latest_promotion(self) -> dict[str, Any] | None:
        latest = self.latest()
        return json.loads((latest / PROMOTION_FILE).read_text()) if latest else None

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def promote(self, model_dir: Path, metric: str, value: float, min_delta: float) -> Decision:
        """Publish ``model_dir`` as a new version and point ``latest`` at it, if it is good enough.

        The candidate is accepted when no model is promoted yet or when
        ``value >= current + min_delta`` (``min_delta`` in the metric's units; a negative one
        tolerates a small regression, e.g. -0.5 points of top-1).
        """
        current = self.latest_promotion()
        previous_value = current["value"] if current and current["metric"] == metric else None
        decision = Decision(
            promoted=True,
            reason="no model promoted yet",
            metric=metric,
            value=value,
            previous_version=current["version"] if current else None,
            previous_value=previous_value,
        )
        if current is not None and previous_value is None:
            decision = replace(decision, reason=f"{current['version']} has no {metric}")
        elif previous_value is not None:
            threshold = previous_value + min_delta
            comparison = f"{metric} {value:.4g} vs {previous_value:.4g} of {current['version']}"
            if value < threshold:
                return self._record(
                    replace(
                        decision,
                        promoted=False,
                        reason=f"{comparison}: below the gate {threshold:.4g} "
                        f"(min_delta {min_delta:+g})",
                    )
                )
            decision = replace(
                decision, reason=f"{comparison}: passes the gate (min_delta {min_delta:+g})"
            )
        version = self._publish(model_dir, decision)
        return self._record(replace(decision, version=version))

    def rollback(self, version: str) -> None:
        """Point ``latest`` at an earlier version (kept in the history like a promotion)."""
        if version not in self.versions():
            known = ", ".join(self.versions()) or "none"
            raise UsageError(f"{self.root}: no version {version!r} (versions: {known})")
        self._point_latest_at(version)
        self._append_history({"time": now(), "rollback": True, "version": version})

    def _publish(self, model_dir: Path, decision: Decision) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        incoming = self.root / f".incoming-{os.getpid()}"
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.copytree(model_dir, incoming, ignore=shutil.ignore_patterns(STATE_FILE))
        umask_permissions(incoming)  # the export's staging files may still be private (0600)
        while True:
            newest = self.versions()[-1] if self.versions() else "v0000"
            version = f"v{int(newest[1:]) + 1:04d}"
            record = {**asdict(decision), "version": version, "time": now()}
            (incoming / PROMOTION_FILE).write_text(json.dumps(record, indent=2) + "\n")
            try:
                os.rename(incoming, self.root / version)
            except OSError as error:  # another run published this version first: take the next
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue
            break
        self._point_latest_at(version)
        return version

    def _point_latest_at(self, version: str) -> None:
        link = self.root / f".{LATEST}-{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(version)
        os.replace(link, self.root / LATEST)

    def _record(self, decision: Decision) -> Decision:
        self._append_history({"time": now(), **asdict(decision)})
        return decision

    def _append_history(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / HISTORY, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
