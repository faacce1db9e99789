"""The artifact cache: pinned files from outside the OS repositories, kept on the controller.

`fetch` runs during the internet phase; afterwards deploys only read the cache and push
its files over SSH. A missing or altered file is an input error naming the file and how
to obtain it, raised before any host is touched.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import InputError, InputProblem
from core.yamlsource import SafeLoader

_UNPACK_LOCK = threading.Lock()
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


# The servers' Python and machine, for wheel sets (Debian 12: CPython 3.11 on x86_64).
WHEEL_TARGET = (
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    *(
        arg
        for tag in (
            "manylinux_2_28_x86_64",
            "manylinux_2_27_x86_64",
            "manylinux_2_26_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
            "manylinux_2_5_x86_64",
            "manylinux1_x86_64",
            "linux_x86_64",
            "any",
        )
        for arg in ("--platform", tag)
    ),
)


@functools.lru_cache(maxsize=16)
def parsed(text: str) -> Any:
    """YAML parsed once per content: tasks ask for the manifest on every host in every step,
    and parsing it with its lock file costs ~30 ms each time (2 ms with libyaml's parser, when
    PyYAML has it: the components' declarations read it as they are imported, at every start).
    Callers must not modify it."""
    return yaml.load(text, Loader=SafeLoader)


def manifest() -> dict[str, Artifact]:
    data = parsed(MANIFEST.read_text())
    found = {}
    for name, entry in data.items():
        if "lock" in entry:  # a wheel set: every file pinned in its lock file
            lock_file = MANIFEST.parent / entry["lock"]
            files = (parsed(lock_file.read_text()) if lock_file.exists() else None) or []
            items = tuple(ArtifactFile(f["name"], f"wheel:{f['requirement']}", f["sha256"]) for f in files)
        else:
            items = tuple(ArtifactFile(**f) for f in entry["files"])
        found[name] = Artifact(name, str(entry["version"]), items)
    return found


def lock(name: str, requirement: str) -> Path:
    """Resolve `requirement` for the servers' platform and pin every wheel (maintainers, internet phase)."""
    entry = yaml.safe_load(MANIFEST.read_text())[name]
    target = MANIFEST.parent / entry["lock"]
    with tempfile.TemporaryDirectory() as scratch:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", *WHEEL_TARGET, "-d", scratch, requirement]
        subprocess.run(pip, check=True)
        wheels = sorted(Path(scratch).glob("*.whl"))
        pinned = [
            {"name": w.name, "requirement": "==".join(w.name.split("-")[:2]), "sha256": sha256(w)} for w in wheels
        ]
    header = f"# {name}: the wheel set of {requirement} for CPython 3.11 on x86_64, pinned by\n"
    header += f"# python runbooks/artifacts.py lock {name} '{requirement}'. Do not edit by hand.\n"
    target.write_text(header + yaml.safe_dump(pinned, sort_keys=False))
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CHECKSUMS = CACHE / ".sha256.json"  # the cache's files' checksums, by path, with the version they are of
_checksums_lock = threading.Lock()


def checksum(path: Path) -> str:
    """The SHA-256 of a file (in the cache: read again only when the file changed).

    Every run checks every artifact it will push before touching a host (64 files, 35 ms
    of each start). A checksum is kept with its file's size, inode, modification and
    change time: writing the file in any way, even with its old modification time put
    back, changes its change time, which only the kernel sets, and the file is read again.
    """
    if not path.resolve().is_relative_to(CACHE):
        return sha256(path)
    stat = path.stat()
    version = [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]
    key = str(path)
    with _checksums_lock:
        known = _known_checksums()
        if key in known and known[key][:4] == version:
            return str(known[key][4])
        digest = sha256(path)
        known[key] = [*version, digest]
        scratch = CHECKSUMS.with_name(f"{CHECKSUMS.name}.{os.getpid()}")
        try:
            scratch.write_text(json.dumps(known, indent=0, sort_keys=True))
            scratch.replace(CHECKSUMS)
        except OSError:  # a read-only cache: computed again next time, nothing else changes
            scratch.unlink(missing_ok=True)
        return digest


@functools.cache
def _known_checksums() -> dict[str, list[Any]]:
    try:
        found = json.loads(CHECKSUMS.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


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
    if not artifact.files:
        found.append(
            InputProblem(
                str(MANIFEST.relative_to(REPO)),
                artifact.name,
                "no files pinned (its lock file is missing or empty)",
                f"restore the lock file from git, or pin it: python runbooks/artifacts.py lock {artifact.name} "
                "'<requirement>'",
            )
        )
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
        elif checksum(item.path) != item.sha256:
            found.append(
                InputProblem(
                    str(MANIFEST.relative_to(REPO)),
                    f"{artifact.name}: {item.name}",
                    f"checksum mismatch (cache has {checksum(item.path)[:16]}…)",
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
    """The file a server gets for `item`: the cached file, or its `member` unpacked beside it.

    Hosts run in threads: one unpacks (into a scratch folder, then renamed) while the
    others wait, so no host ever reads a half-written binary. Without the archive (only
    plan mode gets this far then: it shows the configuration of what it cannot install yet)
    the path it would be unpacked to.
    """
    if item.member is None:
        return item.path
    unpacked = CACHE / "unpacked" / item.name / item.member
    with _UNPACK_LOCK:
        if not unpacked.exists() and item.path.exists():
            unpacked.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=unpacked.parent) as scratch, tarfile.open(item.path) as archive:
                archive.extract(item.member, scratch, filter="data")
                (Path(scratch) / item.member).replace(unpacked)
    return unpacked


def fetch(artifact: Artifact) -> list[str]:
    """Download what is missing (internet phase), verify it, build wheels; returns what was done."""
    done = []
    CACHE.mkdir(parents=True, exist_ok=True)
    for item in artifact.files:
        if item.sha256 is None:
            raise InputError(problems(Artifact(artifact.name, artifact.version, (item,))))
        if not item.path.exists():
            if item.source.startswith("wheel:"):
                _download_wheels([i for i in artifact.files if i.source.startswith("wheel:") and not i.path.exists()])
                done.append("downloaded the wheel set")
            else:
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


def _download_wheels(items: list[ArtifactFile]) -> None:
    """One pip call for the missing wheels of a set, each pinned, for the servers' platform."""
    with tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("".join(f"{i.source.removeprefix('wheel:')} --hash=sha256:{i.sha256}\n" for i in items))
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", *WHEEL_TARGET]
        subprocess.run([*pip, "-d", str(CACHE), "-r", str(requirements)], check=True)


def _download(item: ArtifactFile) -> None:
    kind, _, where = item.source.partition(":")
    if kind == "pip":
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(CACHE)]
        subprocess.run([*pip, where], check=True)
    elif kind == "url":
        import urllib.request  # only a fetch downloads: every other run is spared its import (7 ms)

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
