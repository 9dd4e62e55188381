"""Benchmark corpora, generated deterministically (seeded) into bench/.cache/corpora/.

small  thousands of small files with random (incompressible) content and log-normal sizes
src    a real source tree of text: the installed Python standard library's *.py files
big    one large incompressible file
huge   one 1 GiB incompressible file (the peak-memory run)

Each corpus directory holds ``tree/`` and ``manifest.json`` ({path: [size, sha256]}); the
manifest is written last, so a corpus with a manifest is complete and is reused as is.
Derived trees: ``<corpus>-v2`` (1 % of the files changed, unchanged ones hard-linked so their
mtimes stay; what a redeploy sends) and ``<corpus>-scpN`` (a representative subset for scp).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

MiB = 1 << 20
Manifest = dict[str, list[Any]]  # path -> [size, sha256] (as read back from manifest.json)


@dataclass(frozen=True)
class CorpusSpec:
    """What to generate."""

    name: str  # small | src | big | huge
    kind: str  # random-files | stdlib | one-file
    files: int = 0  # random-files: count; stdlib: 0 = all, N = every k-th to get ~N files
    total: int = 0  # bytes (random-files, one-file)
    seed: int = 1

    @property
    def key(self) -> str:
        """Cache directory name: changes whenever the content would."""
        if self.kind == "stdlib":
            version = "".join(map(str, __import__("sys").version_info[:2]))
            return f"src-py{version}-{self.files or 'all'}"
        return f"{self.name}-{self.files}-{self.total}-s{self.seed}"


@dataclass
class Corpus:
    """A generated tree and its manifest."""

    name: str
    tree: Path
    manifest: Manifest

    @property
    def files(self) -> int:
        """How many files the tree holds."""
        return len(self.manifest)

    @property
    def bytes(self) -> int:
        """The total size of its files."""
        return sum(size for size, _ in self.manifest.values())

    @property
    def label(self) -> str:
        """'small: 3000 files, 66 MB': how tables name the corpus."""
        return f"{self.name}: {self.files} file{'s' if self.files != 1 else ''}, {_mb(self.bytes)}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 10e6 else f"{n / 1e6:.1f} MB"


def keystream(seed: str) -> CipherContext:
    """A deterministic incompressible byte stream (AES-CTR of zeros; fast, unlike random.randbytes)."""
    key = hashlib.sha256(seed.encode()).digest()
    return Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()


def random_bytes(seed: str, size: int) -> bytes:
    """`size` deterministic random bytes for one file."""
    return keystream(seed).update(bytes(size))


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def scan(tree: Path) -> Manifest:
    """{relative path: [size, sha256]} of every regular file under tree (symlinks ignored)."""
    manifest: Manifest = {}
    for root, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.is_symlink() or not path.is_file():
                continue
            manifest[path.relative_to(tree).as_posix()] = [path.stat().st_size, sha256_file(path)]
    return manifest


def _finish(base: Path, name: str) -> Corpus:
    tree = base / "tree"
    manifest = scan(tree)
    (base / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return Corpus(name, tree, manifest)


def _load(base: Path, name: str) -> Corpus | None:
    path = base / "manifest.json"
    if not path.exists():
        return None
    return Corpus(name, base / "tree", json.loads(path.read_text()))


def build(spec: CorpusSpec, cache: Path) -> Corpus:
    """Generate (or reuse) a corpus."""
    base = cache / spec.key
    found = _load(base, spec.name)
    if found is not None:
        return found
    shutil.rmtree(base, ignore_errors=True)
    tree = base / "tree"
    tree.mkdir(parents=True)
    if spec.kind == "random-files":
        _random_files(tree, spec)
    elif spec.kind == "stdlib":
        _stdlib(tree, spec.files)
    elif spec.kind == "one-file":
        stream = keystream(f"{spec.seed}:{spec.name}")
        with open(tree / f"{spec.name}.bin", "wb") as out:
            left = spec.total
            while left:
                n = min(left, 16 * MiB)
                out.write(stream.update(bytes(n)))
                left -= n
    else:
        raise ValueError(spec.kind)
    return _finish(base, spec.name)


def _random_files(tree: Path, spec: CorpusSpec) -> None:
    rng = random.Random(spec.seed)
    raw = [rng.lognormvariate(0.0, 1.2) for _ in range(spec.files)]
    scale = spec.total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    sizes[-1] = max(1, sizes[-1] + spec.total - sum(sizes))
    dirs = max(1, spec.files // 100)
    for i, size in enumerate(sizes):
        folder = tree / f"d{i % dirs:02d}" / f"s{(i // dirs) % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(random_bytes(f"{spec.seed}:{i}", size))


def _stdlib(tree: Path, wanted: int) -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "__pycache__" not in p.parts
        and p.is_file() and not p.is_symlink()
    )  # fmt: skip
    step = max(1, math.ceil(len(files) / wanted)) if wanted else 1
    for source in files[::step]:
        target = tree / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def changed_copy(corpus: Corpus, cache: Path, share: float = 0.01, seed: int = 2) -> Corpus:
    """The next release: `share` of the files modified, the rest hard-linked (same inode, same mtime)."""
    base = cache / f"{corpus.tree.parent.name}-v2-{share:g}"
    found = _load(base, corpus.name)
    if found is not None:
        return found
    shutil.rmtree(base, ignore_errors=True)
    paths = sorted(corpus.manifest)
    rng = random.Random(seed)
    chosen = set(rng.sample(paths, max(1, round(len(paths) * share))))
    for rel in paths:
        source, target = corpus.tree / rel, base / "tree" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel not in chosen:
            os.link(source, target)
            continue
        data = bytearray(source.read_bytes())
        if data:
            at = rng.randrange(len(data))
            data[at : at + 32] = random_bytes(f"{seed}:{rel}", min(32, len(data) - at))
        data += b"\n# changed for the redeploy benchmark\n"
        target.write_bytes(bytes(data))
    return _finish(base, corpus.name)


def subset(corpus: Corpus, cache: Path, count: int) -> Corpus:
    """Every k-th file (hard-linked), about `count` of them: representative sizes for scp."""
    if count >= corpus.files:
        return corpus
    base = cache / f"{corpus.tree.parent.name}-scp{count}"
    found = _load(base, corpus.name)
    if found is not None:
        return found
    shutil.rmtree(base, ignore_errors=True)
    paths = sorted(corpus.manifest)
    step = max(1, len(paths) // count)
    for rel in paths[::step][:count]:
        target = base / "tree" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(corpus.tree / rel, target)
    return _finish(base, corpus.name)


def verify(dest: Path, manifest: Manifest) -> str:
    """'' when dest holds exactly the manifest's files with their sizes and sha256; else what differs."""
    if not dest.is_dir():
        return f"{dest} does not exist"
    found: dict[str, int] = {}
    for root, _dirs, files in os.walk(dest):
        for name in files:
            path = Path(root, name)
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(dest).as_posix()] = path.stat().st_size
    missing = [p for p in manifest if p not in found]
    extra = [p for p in found if p not in manifest]
    wrong_size = [p for p, (size, _) in manifest.items() if p in found and found[p] != size]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if wrong_size:
        problems.append(f"{len(wrong_size)} with the wrong size (e.g. {wrong_size[0]})")
    if problems:
        return "; ".join(problems)
    bad = [p for p, (_, sha) in manifest.items() if sha256_file(dest / p) != sha]
    if bad:
        return f"{len(bad)} with the wrong content (e.g. {bad[0]})"
    return ""
