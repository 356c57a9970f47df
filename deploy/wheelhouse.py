"""Build an offline wheelhouse of sslpipe for a GPU node without network (docs/offline-install.md).

    python deploy/wheelhouse.py --python-version 3.12 --platform manylinux_2_28_x86_64 \\
        --out build/wheelhouse [--variant full] [--variant torchless] [--part-mib 60]

For each variant, a folder ``OUT/sslpipe-<version>-<variant>-cp<XY>-<platform>/`` to carry to the
node whole: ``wheelhouse.tar.NNN`` (one tar of every wheel, cut into parts of at most
``--part-mib`` MiB, so a wheel larger than a part spans several), ``SHA256SUMS`` (the parts and
``wheelhouse.json``, in ``sha256sum --check`` form, the parts in joining order),
``wheelhouse.json`` (target, wheels, parts) and ``install-offline.sh``, which checks, joins and
installs them with ``pip install --no-index``.

Variants: ``full`` holds every runtime dependency, torch and its CUDA libraries included;
``torchless`` is for an image that already ships torch and torchvision: it leaves out what only
they need, and keeps everything else, DALI's CUDA libraries (nvImageCodec, nvJPEG, nvCOMP)
included.

The resolution is pip's (``pip download --only-binary=:all:`` for the target's Python and
platform tags). The wheels' own METADATA then decides what each variant carries: the closure of
sslpipe's ``Requires-Dist``, extras followed and markers evaluated for the target, skipping
what the image provides. A requirement that no wheel satisfies stops the build. pip evaluates
platform markers for the machine it runs on, so the target's architecture must be this
machine's. pip's index settings (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``, pip.conf)
apply as usual.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import BinaryIO

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ModuleNotFoundError:
    sys.exit("wheelhouse: needs the `packaging` module: pip install packaging")

# Packages an image provides in each variant (nothing for `full`).
VARIANTS: dict[str, frozenset[str]] = {
    "full": frozenset(),
    "torchless": frozenset({"torch", "torchvision"}),
}
PART_PREFIX = "wheelhouse.tar."
CHECKSUMS = "SHA256SUMS"
INFO = "wheelhouse.json"
INSTALLER = Path(__file__).with_name("install-offline.sh")
# Source-tree entries that never belong in the wheel (stale build/ output would leak into it).
NOT_SOURCE = (".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*_cache")
# The legacy manylinux names of glibc 2.17, 2.12 and 2.5 (PEP 599, 571, 513).
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
CHUNK = 1 << 20


class WheelhouseError(Exception):
    """One line for the user; ``exit_code`` 2 for an argument mistake, 1 for the machine."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def split_platform(tag: str) -> tuple[int | None, str]:
    """(newest glibc minor version, machine) of a wheel platform tag; no glibc for non-manylinux."""
    if match := re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag):
        return int(match[1]), match[2]
    legacy = {name: minor for minor, name in LEGACY_MANYLINUX.items()}
    if (match := re.fullmatch(r"(manylinux(?:1|2010|2014))_(\w+)", tag)) and match[1] in legacy:
        return legacy[match[1]], match[2]
    return None, tag.split("_", 1)[-1]


def compatible_platforms(tag: str) -> list[str]:
    """The platform tags a node of ``tag`` installs, best first: a ``manylinux_2_28`` node takes
    ``manylinux_2_27`` … ``manylinux_2_5`` wheels and their legacy names too (PEP 600)."""
    newest, machine = split_platform(tag)
    if newest is None:
        return [tag]
    tags = []
    for minor in range(newest, 4, -1):
        tags.append(f"manylinux_2_{minor}_{machine}")
        if minor in LEGACY_MANYLINUX:
            tags.append(f"{LEGACY_MANYLINUX[minor]}_{machine}")
    return tags


@dataclass(frozen=True)
class Target:
    python_version: str  # "3.12"
    platform: str  # a wheel platform tag, "manylinux_2_28_x86_64"

    @property
    def machine(self) -> str:
        return split_platform(self.platform)[1]

    @property
    def tag(self) -> str:
        return f"cp{self.python_version.replace('.', '')}-{self.platform}"

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values on the target (a CPython on Linux)."""
        return {
            "implementation_name": "cpython",
            "implementation_version": f"{self.python_version}.0",
            "os_name": "posix",
            "platform_machine": self.machine,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": f"{self.python_version}.0",
            "python_version": self.python_version,
            "sys_platform": "linux",
        }

    def pip_options(self) -> list[str]:
        options = ["--only-binary=:all:", "--implementation", "cp"]
        options += ["--python-version", self.python_version]
        for tag in compatible_platforms(self.platform):
            options += ["--platform", tag]
        return options


@dataclass(frozen=True)
class Dist:
    """A distribution's name, version and ``Requires-Dist`` lines, as its METADATA says."""

    name: str
    version: str
    requires: tuple[str, ...]
    filename: str = ""


def wheel_metadata(wheel: Path) -> Dist:
    with zipfile.ZipFile(wheel) as archive:
        member = next(
            n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)
        )
        headers = HeaderParser().parsestr(archive.read(member).decode("utf-8"))
    return Dist(
        name=headers["Name"],
        version=headers["Version"],
        requires=tuple(headers.get_all("Requires-Dist") or ()),
        filename=wheel.name,
    )


def applies(requirement: Requirement, environment: Mapping[str, str], extra: str = "") -> bool:
    """Whether a requirement's marker holds on the target for a requirer asked for ``extra``."""
    marker = requirement.marker
    return marker is None or marker.evaluate({**environment, "extra": extra})


def by_name(dists: Iterable[Dist]) -> dict[str, Dist]:
    return {canonicalize_name(dist.name): dist for dist in dists}


@dataclass
class Closure:
    """What a root needs: every distribution reached, and every requirement nothing satisfies."""

    needed: dict[str, Dist] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def requirement_closure(
    root: str, dists: Mapping[str, Dist], environment: Mapping[str, str], provided: frozenset[str]
) -> Closure:
    """Follow ``Requires-Dist`` from ``root`` through ``dists`` (keyed by canonical name).

    A requirement counts when its marker holds in ``environment`` for no extra or for an extra
    its requirer was asked for; names in ``provided`` are taken as already installed.
    """
    closure = Closure()
    extras_done: dict[str, set[str]] = {}
    pending: deque[tuple[str, Requirement]] = deque([("the command line", Requirement(root))])
    while pending:
        requirer, requirement = pending.popleft()
        name = canonicalize_name(requirement.name)
        if name in provided:
            continue
        dist = dists.get(name)
        if dist is None or not requirement.specifier.contains(dist.version, prereleases=True):
            found = f", found {dist.version}" if dist else ""
            closure.missing.append(f"{requirement} (required by {requirer}{found})")
            continue
        closure.needed[name] = dist
        done = extras_done.setdefault(name, set())
        for extra in ({""} | set(requirement.extras)) - done:
            done.add(extra)
            for line in dist.requires:
                dependency = Requirement(line)
                if applies(dependency, environment, extra):
                    pending.append((f"{dist.name} {dist.version}", dependency))
    return closure


def direct_requirements(
    project: Dist, environment: Mapping[str, str], provided: frozenset[str]
) -> list[str]:
    """The project's own requirements that hold on the target and the image does not provide."""
    return [
        line
        for line in project.requires
        if canonicalize_name(Requirement(line).name) not in provided
        and applies(Requirement(line), environment)
    ]


def run(command: list[str], failure: str) -> None:
    print("+", " ".join(command), flush=True)
    returncode = subprocess.run(command, check=False).returncode
    if returncode != 0:
        raise WheelhouseError(f"{failure} (exit {returncode}); its output above says why")


def build_project_wheel(project: Path, dest: Path) -> Path:
    """Build the project's wheel from a clean copy of its tree (no stale ``build/`` output)."""
    with tempfile.TemporaryDirectory(prefix="wheelhouse-src-") as scratch:
        source = Path(scratch) / "src"
        shutil.copytree(project, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        run([*pip_wheel, "--wheel-dir", str(dest), str(source)], "building the project's wheel")
    (wheel,) = dest.glob("*.whl")  # the folder is new: the project's wheel is its only one
    return wheel


def download(requirements: list[str], dest: Path, target: Target) -> None:
    pip_download = [sys.executable, "-m", "pip", "download", "--dest", str(dest)]
    run([*pip_download, *target.pip_options(), *requirements], "pip download failed")


class PartWriter:
    """A binary sink that cuts what it is given into files of at most ``part_bytes`` bytes and
    hashes each as it goes."""

    def __init__(self, folder: Path, part_bytes: int) -> None:
        self.folder = folder
        self.part_bytes = part_bytes
        self.parts: list[tuple[str, str, int]] = []  # (file name, sha256, size)
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._file is None or self._size == self.part_bytes:
                self._start_part()
            take = view[: self.part_bytes - self._size]
            self._file.write(take)
            self._hash.update(take)
            self._size += len(take)
            view = view[len(take) :]
        return len(data)

    def _start_part(self) -> None:
        self._finish_part()
        name = f"{PART_PREFIX}{len(self.parts):03d}"
        self._file = (self.folder / name).open("wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self.parts.append((name, "", 0))

    def _finish_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts[-1] = (self.parts[-1][0], self._hash.hexdigest(), self._size)
            self._file = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exception: object) -> None:
        self._finish_part()


def _reproducible(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mtime = 0
    member.mode = 0o644
    return member


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pack(wheels: list[Path], folder: Path, part_bytes: int) -> list[tuple[str, str, int]]:
    """Write ``wheels`` as one tar (``wheels/<file>``) cut into parts; return the parts."""
    with (
        PartWriter(folder, part_bytes) as writer,
        tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        for wheel in sorted(wheels):
            archive.add(wheel, arcname=f"wheels/{wheel.name}", filter=_reproducible)
    return writer.parts


def write_variant(
    variant: str, closure: Closure, source: Path, target: Target, out: Path, part_bytes: int
) -> Path:
    """Pack one variant into ``out/<project>-<version>-<variant>-<target tag>/``, whole or not
    at all (it is written under a hidden name, then renamed)."""
    project = next(iter(closure.needed.values()))  # the root comes first
    final = out / f"{canonicalize_name(project.name)}-{project.version}-{variant}-{target.tag}"
    partial = out / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    wheels = [source / dist.filename for dist in closure.needed.values()]
    parts = pack(wheels, partial, part_bytes)
    info = {
        "project": project.name,
        "version": project.version,
        "variant": variant,
        "python_version": target.python_version,
        "platform": target.platform,
        "machine": target.machine,
        "provided": sorted(VARIANTS[variant]),
        "wheels": [
            {"file": wheel.name, "bytes": wheel.stat().st_size, "sha256": sha256_of(wheel)}
            for wheel in sorted(wheels)
        ],
        "parts": [{"file": name, "bytes": size, "sha256": digest} for name, digest, size in parts],
    }
    (partial / INFO).write_text(json.dumps(info, indent=1) + "\n")
    sums = [(digest, name) for name, digest, _ in parts] + [(sha256_of(partial / INFO), INFO)]
    (partial / CHECKSUMS).write_text("".join(f"{digest}  {name}\n" for digest, name in sums))
    shutil.copy2(INSTALLER, partial / INSTALLER.name)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def build(
    target: Target, variants: list[str], out: Path, project_root: Path, part_bytes: int
) -> list[Path]:
    environment = target.marker_environment()
    # One download serves every variant: the full one when asked for, else the smaller one.
    download_for = "full" if "full" in variants else variants[0]
    source = out / ".download" / target.tag
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    project = wheel_metadata(build_project_wheel(project_root, source))
    download(direct_requirements(project, environment, VARIANTS[download_for]), source, target)
    dists = by_name(wheel_metadata(wheel) for wheel in source.glob("*.whl"))
    folders = []
    for variant in variants:
        closure = requirement_closure(project.name, dists, environment, VARIANTS[variant])
        if closure.missing:
            raise WheelhouseError(
                f"the {variant} wheelhouse would miss {'; '.join(closure.missing)}: "
                "no downloaded wheel satisfies it"
            )
        folders.append(write_variant(variant, closure, source, target, out, part_bytes))
    return folders


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", required=True, help="target Python, e.g. 3.12")
    parser.add_argument("--platform", required=True, help="e.g. manylinux_2_28_x86_64")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--variant", action="append", choices=sorted(VARIANTS), help="default: every variant"
    )
    parser.add_argument("--part-mib", type=float, default=60.0, help="largest part (MiB)")
    parser.add_argument(
        "--project",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the project to pack (default: this repository)",
    )
    return parser.parse_args(argv)


def check_arguments(arguments: argparse.Namespace, target: Target) -> None:
    if not re.fullmatch(r"3\.\d+", target.python_version):
        raise WheelhouseError(
            f"--python-version {target.python_version!r}: give major.minor, e.g. 3.12", 2
        )
    if target.machine != platform.machine():
        raise WheelhouseError(
            f"--platform {target.platform}: its machine {target.machine} is not this machine's "
            f"{platform.machine()} (pip evaluates platform markers here): build on an "
            f"{target.machine} machine",
            2,
        )
    if not arguments.part_mib > 0:
        raise WheelhouseError(f"--part-mib {arguments.part_mib}: give a size above 0", 2)
    if not (arguments.project / "pyproject.toml").is_file():
        raise WheelhouseError(f"--project {arguments.project}: no pyproject.toml there", 2)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    target = Target(arguments.python_version, arguments.platform)
    variants = list(dict.fromkeys(arguments.variant or VARIANTS))
    started = time.monotonic()
    try:
        check_arguments(arguments, target)
        folders = build(
            target,
            variants,
            arguments.out.resolve(),
            arguments.project.resolve(),
            int(arguments.part_mib * 2**20),
        )
    except WheelhouseError as error:
        print(f"wheelhouse: {error}", file=sys.stderr)
        return error.exit_code
    for folder in folders:
        info = json.loads((folder / INFO).read_text())
        size = sum(wheel["bytes"] for wheel in info["wheels"]) / 2**20
        print(
            f"{folder}: {len(info['wheels'])} wheels, {size:.0f} MiB, "
            f"{len(info['parts'])} parts of at most {arguments.part_mib:g} MiB"
        )
    print(f"wheelhouse built in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
