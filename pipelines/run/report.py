"""``sslpipe report WORKDIR``: one self-contained ``report.html`` (plots inlined as PNG).

It reads only what the runs left on disk: the latest run's spec name and sslpipe version
(``run.json``), each stage's ``state.json``, per ingest stage its source, data fingerprint,
class counts and rejected inputs (``manifest.json``), the pretrain history (from the published
stage, or from the latest Ray checkpoint when the stage did not finish — the case of a failed
night), the probe's ``metrics.json`` and ``confusion.json``, and the ``--if-changed`` checks.
The file opens offline: no scripts, no links. matplotlib loads only here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .outputs import CONFUSION, HISTORY, MANIFEST, METRICS, REJECTED
from .store import RunStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"
# History keys that are not loss terms: plotted on their own or not at all.
_MONITORED = {
    "step", "epoch", "lr", "images_per_s", "images_per_s_per_worker", "data_wait_share",
    "embedding_std", "normalised_std", "rankme", "online_probe_top1",
}  # fmt: skip


def write_report(workdir: Path) -> Path:
    """Write ``<workdir>/report.html`` atomically and return its path."""
    store = RunStore(workdir)
    states = store.states()
    if not states:
        raise UserError(f"{workdir}: no stage has run here, so there is nothing to report")
    sections = [_run_table(store), _stage_table(states), *_checks(store)]
    for name, state in states.items():
        if state.get("type") == "ingest" and (store.stage_dir(name) / MANIFEST).is_file():
            sections += _data_section(name, state, store.stage_dir(name))
        if state.get("type") == "pretrain":
            sections += _pretrain_section(name, _history(Path(workdir), name))
        elif state.get("type") == "probe" and state.get("status") == "succeeded":
            sections += _probe_section(name, store.stage_dir(name))
    page = (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>sslpipe report: {html.escape(str(workdir))}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        ".failed,.interrupted,.stale{color:#b00}img{max-width:100%}</style>"
        f"<h1>sslpipe report: {html.escape(str(workdir))}</h1>" + "".join(sections)
    )
    path = Path(workdir) / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _stage_table(states: dict[str, dict[str, Any]]) -> str:
    """The latest attempt of each stage, in pipeline order, stale results marked stale."""
    rows = []
    stale = RunStore.stale(states)
    for name, state in states.items():
        status = "stale" if name in stale else state.get("status", "?")
        metrics = state.get("metrics") or {}
        detail = state.get("error") or ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        if name in stale:
            detail = f"{stale[name]}; {detail}"
        cells = [name, state.get("type", ""), status, state.get("started", ""),
                 state.get("ended", ""), state.get("seconds", ""), detail]  # fmt: skip
        rows.append(
            f"<tr class='{html.escape(status)}'>"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("stage", "type", "status", "started", "ended", "seconds", "metrics / error")
    )
    return f"<h2>Stages</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _run_table(store: RunStore) -> str:
    run = store.last_run()
    rows = [
        ("spec", run.get("spec", "?")),
        ("sslpipe version", run.get("sslpipe_version", "?")),
        ("last run started", run.get("started", "?")),
        ("workdir", str(store.workdir)),
    ]
    return "<h2>Run</h2>" + _table(rows)


def _data_section(stage: str, state: dict[str, Any], stage_dir: Path) -> list[str]:
    """Where an ingest stage's images came from, its classes and what it refused."""
    manifest = json.loads((stage_dir / MANIFEST).read_text())
    source = state.get("config", {}).get("source", {})
    reasons = ", ".join(f"{why} {count}" for why, count in manifest.get("rejected", {}).items())
    rejected = f"{manifest.get('num_rejected', 0):,}"
    if reasons:
        rejected += f" ({reasons}; each with its reason in {stage_dir / REJECTED})"
    images = f"{manifest.get('num_samples', 0):,} in {manifest.get('num_classes', 0)} classes"
    rows = [
        ("source", ", ".join(f"{k}: {v}" for k, v in source.items()) or "?"),
        ("data fingerprint", manifest.get("source_fingerprint", "?")),
        ("images", images),
        ("rejected", rejected),
    ]
    counts = {name: split.get("class_counts", {}) for name, split in manifest["splits"].items()}
    classes = sorted({c for split in counts.values() for c in split})
    head = "".join(f"<th>{html.escape(name)}</th>" for name in counts)
    body = "".join(
        f"<tr><td>{html.escape(c)}</td>"
        + "".join(f"<td>{split.get(c, 0):,}</td>" for split in counts.values())
        + "</tr>"
        for c in classes
    )
    table = f"<table><tr><th>class</th>{head}</tr>{body}</table>"
    return [f"<h2>{html.escape(stage)}: data</h2>", _table(rows), table]


def _checks(store: RunStore) -> list[str]:
    records = store.checks()[-10:]
    if not records:
        return []
    items = []
    for record in records:
        changed = record["changed"]
        what = ", ".join(f"{k}: {v}" for k, v in changed.items()) if changed else "no change"
        if record.get("error"):
            what = f"failed: {record['error']}"
        items.append(f"<li>{html.escape(record['time'])}: {html.escape(what)}</li>")
    return [f"<h2>--if-changed checks (latest 10)</h2><ul>{''.join(items)}</ul>"]


def _history(workdir: Path, stage: str) -> list[dict[str, float]]:
    """The published history, else the one in the stage's newest Ray checkpoint."""
    candidates = [workdir / stage / HISTORY]
    candidates += sorted(
        workdir.glob(f"_ray/{stage}-*/checkpoint_*/{HISTORY}"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in candidates:
        if path.exists():
            return [json.loads(line) for line in path.read_text().splitlines() if line]
    return []


def _pretrain_section(stage: str, history: list[dict[str, float]]) -> list[str]:
    if not history:
        return [f"<h2>{html.escape(stage)}</h2><p>no training history recorded</p>"]
    steps = [h["step"] for h in history]
    terms = [k for k in history[0] if k not in _MONITORED]
    figure, axes = _pyplot().subplots(2, 3, figsize=(15, 8))
    panels = [
        ("loss and its terms", terms, False),
        ("learning rate", ["lr"], False),
        ("embedding std", ["embedding_std", "normalised_std"], False),
        ("RankMe", ["rankme"], True),
        ("images/s (all workers)", ["images_per_s"], False),
        ("data-wait share of step time", ["data_wait_share"], False),
    ]
    for axis, (title, keys, sparse) in zip(axes.flat, panels, strict=True):
        for key in keys:
            points = [(s, h[key]) for s, h in zip(steps, history, strict=True) if key in h]
            if sparse:  # recomputed every monitor_every_steps, repeated in between
                points = [p for i, p in enumerate(points) if i == 0 or p[1] != points[i - 1][1]]
            if points:
                axis.plot(*zip(*points, strict=True), label=key, marker="." if sparse else None)
        axis.set_title(title)
        axis.set_xlabel("step")
        if len(keys) > 1:
            axis.legend(fontsize="small")
    last = history[-1]
    summary = (
        f"{len(history)} steps recorded; last: loss {last['loss']:.4g}, "
        f"{last.get('images_per_s', 0):.0f} img/s, "
        f"data wait {100 * last.get('data_wait_share', 0):.1f}%"
    )
    return [f"<h2>{html.escape(stage)}</h2><p>{summary}</p>", _png(figure)]


def _probe_section(stage: str, stage_dir: Path) -> list[str]:
    metrics = json.loads((stage_dir / METRICS).read_text())
    rows = []
    for name, result in _probe_results(metrics):
        top5 = f"{result['top5']:.2f}" if "top5" in result else ""
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{result['top1']:.2f}</td><td>{top5}</td>")
    table = f"<table><tr><th>probe</th><th>top-1</th><th>top-5</th></tr>{''.join(rows)}</table>"
    parts = [f"<h2>{html.escape(stage)}</h2>", table]
    confusion_path = stage_dir / CONFUSION
    confusion = json.loads(confusion_path.read_text()) if confusion_path.exists() else None
    if confusion:
        figure, axis = _pyplot().subplots(figsize=(6, 5))
        image = axis.imshow(confusion, cmap="Blues")
        axis.set_title("linear probe confusion matrix")
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
        figure.colorbar(image)
        parts.append(_png(figure))
    return parts


def _probe_results(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    results = []
    for prefix, block in (("", metrics), ("random init ", metrics.get("random_init", {}))):
        if "linear" in block:
            results.append((f"{prefix}linear", block["linear"]))
        for k, result in block.get("knn", {}).items():
            results.append((f"{prefix}kNN {k}", result))
    return results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    _pyplot().close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='plot' src='data:image/png;base64,{encoded}'>"
