"""``sslpipe validate``: wall time and peak memory of one check, as a pre-commit hook or CI
step runs it (a fresh process per spec), side by side with what people use instead.

    .venv/bin/python benchmarks/bench_validate.py [--repeat 5] [SPEC ...]

Three ways to check a spec, each a fresh interpreter, measured in turns in one run (so load
on a shared machine hits each alike); median wall seconds and peak RSS (``ru_maxrss`` of the
process itself), warm-up run excluded for each:

- ``sslpipe validate``: every problem with its position (the full check);
- ``jsonschema``: the spec against ``sslpipe schema`` (what an editor's YAML extension or
  a ``check-jsonschema`` hook does; it does not know references between stages, extends,
  ``${VAR}``, loss options or views);
- ``yaml.safe_load``: parsing only (the floor of any check in Python).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURE = """
import resource
{body}
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
WAYS = {
    "sslpipe validate": (
        "from sslpipe.pipelines.cli.main import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['validate', {spec!r}]) == 0"
    ),
    "jsonschema": (
        "import json, yaml, jsonschema\n"
        "schema = json.load(open({schema!r}))\n"
        "jsonschema.validate(yaml.safe_load(open({spec!r})), schema)"
    ),
    "yaml.safe_load": "import yaml\nyaml.safe_load(open({spec!r}))",
}


def _once(body: str) -> tuple[float, float]:
    """Seconds from interpreter start to the end of ``body`` and peak RSS in MB."""
    started = os.times().elapsed
    result = subprocess.run(
        [sys.executable, "-c", MEASURE.format(body=body)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    wall = os.times().elapsed - started
    return wall, float(result.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", default=["pipelines/examples/quickstart.yaml"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    schema = Path(tempfile.mkdtemp()) / "spec.schema.json"
    subprocess.run([sys.executable, "-m", "sslpipe.pipelines.cli", "schema", "--out", str(schema)],
                   check=True, capture_output=True, cwd=REPO)  # fmt: skip
    samples: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for spec in args.specs:
        bodies = {way: code.format(spec=spec, schema=str(schema)) for way, code in WAYS.items()}
        for body in bodies.values():  # warm-up: file caches, .pyc files
            _once(body)
        for _ in range(args.repeat):
            for way, body in bodies.items():
                samples[way].append(_once(body))
    floor = statistics.median(wall for wall, _ in samples["yaml.safe_load"])
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, {args.repeat} runs")
    for way, runs in samples.items():
        wall = statistics.median(w for w, _ in runs)
        rss = max(r for _, r in runs)
        row = {
            "way": way,
            "seconds": round(wall, 3),
            "peak_rss_mb": round(rss),
            "vs_floor": round(wall / floor, 2),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
