"""The artifact cache: pinned files from outside the OS repositories, kept on the controller.

`fetch` runs during the internet phase; afterwards deploys only read the cache and push
its files over SSH. A missing or altered file is an input error naming the file and how
to obtain it, raised before any host is touched.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import InputError, InputProblem

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "artifacts" / "manifest.yaml"
CACHE = REPO / "artifacts" / "cache"


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    source: str
    sha256: str
    build_wheel: bool = False

    @property
    def path(self) -> Path:
        return CACHE / self.name

    @property
    def wheel_dir(self) -> Path:
        """Where a wheel built from a source archive goes."""
        return CACHE / "built"


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    files: tuple[ArtifactFile, ...]


def manifest(path: Path = MANIFEST) -> dict[str, Artifact]:
    data = yaml.safe_load(path.read_text())
    return {
        name: Artifact(name, str(entry["version"]), tuple(ArtifactFile(**f) for f in entry["files"]))
        for name, entry in data.items()
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problems(artifact: Artifact) -> list[InputProblem]:
    """What is missing or altered in the cache for `artifact`."""
    found = []
    for item in artifact.files:
        fix = f"run 'python runbooks/artifacts.py fetch' while the controller has internet, or copy {item.name} "
        fix += f"into {CACHE}"
        if not item.path.exists():
            found.append(
                InputProblem(
                    str(MANIFEST.relative_to(REPO)), f"{artifact.name}: {item.name}", "not in the artifact cache", fix
                )
            )
        elif sha256(item.path) != item.sha256:
            found.append(
                InputProblem(
                    str(MANIFEST.relative_to(REPO)),
                    f"{artifact.name}: {item.name}",
                    f"checksum mismatch (cache has {sha256(item.path)[:16]}…)",
                    f"delete {item.path} and fetch it again; never use a file that fails its checksum",
                )
            )
        elif item.build_wheel and not list(item.wheel_dir.glob(f"{wheel_prefix(item)}*.whl")):
            found.append(
                InputProblem(
                    str(MANIFEST.relative_to(REPO)),
                    f"{artifact.name}: {item.name}",
                    "wheel not built from the source archive",
                    fix,
                )
            )
    return found


def wheel_prefix(item: ArtifactFile) -> str:
    return item.name.removesuffix(".tar.gz").replace("-", "_", item.name.count("-") - 1) + "-"


def deliverables(artifact: Artifact) -> list[Path]:
    """The files pushed to servers: wheels as fetched, or as built from source archives."""
    out = []
    for item in artifact.files:
        out += sorted(item.wheel_dir.glob(f"{wheel_prefix(item)}*.whl")) if item.build_wheel else [item.path]
    return out


def fetch(artifact: Artifact) -> list[str]:
    """Download what is missing (internet phase), verify it, build wheels; returns what was done."""
    done = []
    CACHE.mkdir(parents=True, exist_ok=True)
    for item in artifact.files:
        if not item.path.exists():
            kind, _, requirement = item.source.partition(":")
            if kind != "pip":
                raise InputError(
                    [InputProblem(str(MANIFEST), item.name, f"unknown source kind '{kind}'", "use pip:<requirement>")]
                )
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "-d",
                    str(CACHE),
                    requirement,
                ],
                check=True,
            )
            done.append(f"downloaded {item.name}")
        if sha256(item.path) != item.sha256:
            raise InputError(
                [
                    InputProblem(
                        str(MANIFEST),
                        item.name,
                        "downloaded file fails its sha256",
                        "check the manifest entry; the file was not used",
                    )
                ]
            )
        if item.build_wheel and not list(item.wheel_dir.glob(f"{wheel_prefix(item)}*.whl")):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--quiet",
                    "--no-deps",
                    "-w",
                    str(item.wheel_dir),
                    str(item.path),
                ],
                check=True,
            )
            done.append(f"built a wheel from {item.name}")
    return done
