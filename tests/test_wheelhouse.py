"""deploy/wheelhouse.py and deploy/install-offline.sh: the offline install of issue 20.

The closure is checked on the METADATA of the distributions installed here (the same wheels'
METADATA a wheelhouse carries, without its 3 GB download); the whole path, build → parts →
sha256 check → join → ``pip install --no-index`` → import, runs on a wheelhouse of three tiny
packages built in the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "deploy" / "wheelhouse.py")
wheelhouse = sys.modules["wheelhouse"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wheelhouse)

HERE = wheelhouse.Target(f"{sys.version_info[0]}.{sys.version_info[1]}", "manylinux_2_28_x86_64")
DALI_NEEDS = {
    "nvidia-dali-cuda130",
    "optree",
    "gast",
    "astunparse",
    "libcst",
    "makefun",
    "nvtx",
    "nvidia-nvimgcodec-cu13",
    "nvidia-nvjpeg",  # through nvidia-nvimgcodec-cu13[all]: an extra must be followed
    "nvidia-nvjpeg2k-cu13",
    "nvidia-nvtiff-cu13",
    "nvidia-libnvcomp-cu13",
}
ONLY_TORCH_NEEDS = {
    "torch",
    "torchvision",
    "nvidia-cudnn-cu13",
    "nvidia-nccl-cu13",
    "triton",
    "cuda-toolkit",
}


@pytest.fixture(scope="module")
def installed() -> dict[str, wheelhouse.Dist]:
    """Every distribution of this environment, from its METADATA."""
    return wheelhouse.by_name(
        wheelhouse.Dist(d.metadata["Name"], d.version, tuple(d.requires or ()))
        for d in metadata.distributions()
    )


def unmet(
    names: set[str], dists: dict[str, wheelhouse.Dist], target: wheelhouse.Target, provided: set
) -> list[str]:
    """Every unconditional or target-conditional requirement (no extras) of every listed
    distribution that the list does not hold: a plain second reading of the METADATA."""
    environment = {**target.marker_environment(), "extra": ""}
    gaps = []
    for name in names:
        for line in dists[name].requires:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            needed = canonicalize_name(requirement.name)
            if needed not in names and needed not in provided:
                gaps.append(f"{name} needs {line}")
    return gaps


@pytest.mark.parametrize("variant", sorted(wheelhouse.VARIANTS))
def test_closure_of_sslpipe_covers_every_requirement_of_every_wheel(variant, installed):
    provided = wheelhouse.VARIANTS[variant]
    closure = wheelhouse.requirement_closure(
        "sslpipe", installed, HERE.marker_environment(), provided
    )

    assert closure.missing == []
    names = set(closure.needed)
    assert unmet(names, installed, HERE, set(provided)) == []
    assert names >= DALI_NEEDS
    # ray[default,train]: the extras' requirements are in, the extras not asked for are not
    assert {"aiohttp", "pyarrow", "pandas", "tensorboardx"} <= names
    assert "fastapi" not in names and "gymnasium" not in names
    assert "pytest" not in names  # sslpipe[dev] is not a runtime dependency
    if variant == "full":
        assert names >= ONLY_TORCH_NEEDS
    else:
        assert not ONLY_TORCH_NEEDS & names
        assert {"numpy", "pillow", "typing-extensions"} <= names  # also needed besides torch


def test_the_torchless_download_asks_pip_for_everything_but_torch(installed):
    asked = wheelhouse.direct_requirements(
        installed["sslpipe"], HERE.marker_environment(), wheelhouse.VARIANTS["torchless"]
    )
    names = {canonicalize_name(Requirement(line).name) for line in asked}
    assert "nvidia-dali-cuda130" in names and "ray" in names
    assert not names & {"torch", "torchvision", "pytest", "scikit-image"}


def test_a_dependency_nothing_satisfies_is_reported_with_who_needs_it(installed):
    without = {name: dist for name, dist in installed.items() if name != "nvidia-nvjpeg"}
    closure = wheelhouse.requirement_closure(
        "sslpipe", without, HERE.marker_environment(), wheelhouse.VARIANTS["torchless"]
    )
    assert len(closure.missing) == 1
    assert closure.missing[0].startswith("nvidia-nvjpeg")
    assert "required by nvidia-nvimgcodec-cu13" in closure.missing[0]


def test_markers_are_evaluated_for_the_target_python(installed):
    # libcst asks for pyyaml-ft only on Python 3.13, which this environment never installed
    target = wheelhouse.Target("3.13", "manylinux_2_28_x86_64")
    closure = wheelhouse.requirement_closure(
        "sslpipe", installed, target.marker_environment(), frozenset()
    )
    assert [line.split(" ")[0] for line in closure.missing] == ["pyyaml-ft>=8.0.0;"]


def test_a_manylinux_node_takes_older_manylinux_wheels_too():
    tags = wheelhouse.compatible_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    assert wheelhouse.compatible_platforms("manylinux2014_aarch64")[1] == "manylinux2014_aarch64"


def write_package(root: Path, name: str, requires: list[str], extras: dict, body: str) -> Path:
    folder = root / name
    optional = ", ".join(f"{extra} = {json.dumps(lines)}" for extra, lines in extras.items())
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(textwrap.dedent(body))
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "1.0"
        dependencies = {json.dumps(requires)}
        optional-dependencies = {{ {optional} }}
        [tool.setuptools.package-data]
        {name} = ["*.bin"]
        """)
    )
    return folder


@pytest.fixture(scope="module")
def tiny_wheelhouse(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A wheelhouse of `tinyapp` → `tinydep[fast]` → `tinyfast`, built with pip from local
    wheels only; `tinydep` carries 96 KiB of noise, so it spans several 16 KiB parts."""
    root = tmp_path_factory.mktemp("tiny")
    fast = write_package(root, "tinyfast", [], {}, "SPEED = 3\n")
    dep = write_package(
        root, "tinydep", [], {"fast": ["tinyfast"]}, "from tinyfast import SPEED\nBASE = 39\n"
    )
    (dep / "tinydep" / "noise.bin").write_bytes(os.urandom(96 * 1024))
    app = write_package(
        root,
        "tinyapp",
        ["tinydep[fast]>=1", "not-on-this-python; python_version < '3'"],
        {},
        "import tinydep\n\ndef answer():\n    return tinydep.BASE + tinydep.SPEED\n",
    )
    local_index = root / "index"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(local_index), str(fast), str(dep)], check=True, timeout=120)
    # pip reads only this index: no network, no pip.conf of this machine
    env = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(local_index),
    }
    out = root / "out"
    command = [sys.executable, str(REPO / "deploy" / "wheelhouse.py"), "--out", str(out)]
    command += [
        "--python-version",
        HERE.python_version,
        "--platform",
        f"linux_{platform.machine()}",
    ]
    command += ["--variant", "full", "--part-mib", str(16 / 1024), "--project", str(app)]
    subprocess.run(command, check=True, env=env, timeout=120, capture_output=True)
    (folder,) = out.glob("tinyapp-1.0-full-*")
    return folder, env


@pytest.mark.slow
def test_tiny_wheelhouse_installs_offline_into_a_fresh_venv(tiny_wheelhouse, tmp_path):
    folder, env = tiny_wheelhouse
    info = json.loads((folder / "wheelhouse.json").read_text())
    assert sorted(w["file"].split("-")[0] for w in info["wheels"]) == [
        "tinyapp",
        "tinydep",
        "tinyfast",
    ]
    parts = sorted(folder.glob("wheelhouse.tar.*"))
    assert len(parts) >= 6 and all(p.stat().st_size <= 16 * 1024 for p in parts)
    sums = (folder / "SHA256SUMS").read_text().split()
    assert sums[1::2] == [p.name for p in parts] + ["wheelhouse.json"]

    venv = tmp_path / "venv"
    # virtualenv (a dependency of ray[default]) seeds pip from its cache: 8x less CPU than venv
    subprocess.run(
        [sys.executable, "-m", "virtualenv", "-q", "--no-download", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    installer = folder / "install-offline.sh"
    done = subprocess.run(
        ["bash", str(installer), "--python", str(python), "--", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answer = subprocess.run(
        [str(python), "-c", "import tinyapp; print(tinyapp.answer())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.stdout.strip() == "42", answer.stderr


@pytest.mark.slow
def test_a_damaged_part_stops_the_install_before_pip(tiny_wheelhouse, tmp_path):
    folder, env = tiny_wheelhouse
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in folder.iterdir():
        copy.joinpath(file.name).write_bytes(file.read_bytes())
    damaged = copy / "wheelhouse.tar.002"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    (copy / "wheelhouse.tar.004").unlink()
    done = subprocess.run(
        ["bash", str(copy / "install-offline.sh"), "--python", sys.executable],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "wheelhouse.tar.002 wheelhouse.tar.004" in done.stderr and "copy" in done.stderr
