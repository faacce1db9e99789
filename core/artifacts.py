"""The artifact cache: pinned files from outside the OS repositories, kept on the controller.

`fetch` runs during the internet phase; afterwards deploys only read the cache and push
its files over SSH. A missing or altered file is an input error naming the file and how
to obtain it, raised before any host is touched.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import urllib.request
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
    source: str  # pip:<requirement> or url:<address>
    sha256: str | None  # None: not pinned yet; the file is refused until it is
    build_wheel: bool = False
    target: str | None = None  # where it goes on a server (binaries), e.g. /usr/local/bin/minio
    checksums: str | None = None  # the vendor's published checksum list, to pin `sha256` from
    member: str | None = None  # for an archive: the file inside it that servers get

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


def manifest() -> dict[str, Artifact]:
    data = yaml.safe_load(MANIFEST.read_text())
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


def obtain_hint(item: ArtifactFile) -> str:
    """How the operator gets `item` into the cache."""
    if item.source.startswith("url:"):
        return (
            f"download {item.source.removeprefix('url:')} where there is internet and run "
            f"'python runbooks/artifacts.py import FILE' (or 'fetch' on a controller with internet)"
        )
    return (
        f"run 'python runbooks/artifacts.py fetch' while the controller has internet, or copy {item.name} into {CACHE}"
    )


def problems(artifact: Artifact) -> list[InputProblem]:
    """What is missing, unpinned or altered in the cache for `artifact`."""
    found = []
    for item in artifact.files:
        fix = obtain_hint(item)
        if item.sha256 is None:
            published = f" (published in {item.checksums})" if item.checksums else ""
            found.append(
                InputProblem(
                    str(MANIFEST.relative_to(REPO)),
                    f"{artifact.name}: {item.name}",
                    "no sha256 pinned for this file",
                    f"add the vendor's sha256 of {item.name}{published} as its 'sha256' in the manifest; "
                    "an unpinned file is never used",
                )
            )
        elif not item.path.exists():
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


def binary(item: ArtifactFile) -> Path:
    """The file a server gets for `item`: the cached file, or its `member` unpacked beside it."""
    if item.member is None:
        return item.path
    unpacked = CACHE / "unpacked" / item.name / item.member
    if not unpacked.exists():
        with tarfile.open(item.path) as archive:
            archive.extract(item.member, unpacked.parent, filter="data")
    return unpacked


def fetch(artifact: Artifact) -> list[str]:
    """Download what is missing (internet phase), verify it, build wheels; returns what was done."""
    done = []
    CACHE.mkdir(parents=True, exist_ok=True)
    for item in artifact.files:
        if item.sha256 is None:
            raise InputError(problems(Artifact(artifact.name, artifact.version, (item,))))
        if not item.path.exists():
            _download(item)
            done.append(f"downloaded {item.name}")
        if sha256(item.path) != item.sha256:
            item.path.unlink()
            raise InputError(
                [
                    InputProblem(
                        str(MANIFEST),
                        item.name,
                        "downloaded file fails its sha256 and was deleted",
                        "check the manifest entry against the vendor's published checksum",
                    )
                ]
            )
        if item.build_wheel and not list(item.wheel_dir.glob(f"{wheel_prefix(item)}*.whl")):
            pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(item.wheel_dir)]
            subprocess.run([*pip, str(item.path)], check=True)
            done.append(f"built a wheel from {item.name}")
    return done


def _download(item: ArtifactFile) -> None:
    kind, _, where = item.source.partition(":")
    if kind == "pip":
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(CACHE)]
        subprocess.run([*pip, where], check=True)
    elif kind == "url":
        partial = item.path.with_name(item.name + ".part")
        with urllib.request.urlopen(where, timeout=60) as answer, partial.open("wb") as out:
            shutil.copyfileobj(answer, out)
        partial.replace(item.path)
    else:
        raise InputError(
            [
                InputProblem(
                    str(MANIFEST), item.name, f"unknown source kind '{kind}'", "use pip:<requirement> or url:<url>"
                )
            ]
        )


def import_file(source: Path) -> str:
    """Copy a file the operator downloaded elsewhere into the cache, if the manifest pins it."""
    for artifact in manifest().values():
        for item in artifact.files:
            if item.name != source.name:
                continue
            if item.sha256 is None:
                raise InputError(problems(Artifact(artifact.name, artifact.version, (item,))))
            actual = sha256(source)
            if actual != item.sha256:
                raise InputError(
                    [
                        InputProblem(
                            str(source),
                            f"{artifact.name}: {item.name}",
                            f"sha256 {actual[:16]}… is not the pinned {item.sha256[:16]}…",
                            "download the file again from the vendor; never import a file that fails its checksum",
                        )
                    ]
                )
            CACHE.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, item.path)
            return f"{artifact.name} {artifact.version}: imported {item.name}"
    names = ", ".join(item.name for a in manifest().values() for item in a.files)
    raise InputError(
        [InputProblem(str(source), "(file name)", "not a file of the manifest", f"the cache takes: {names}")]
    )
