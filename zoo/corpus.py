"""The embedded offline corpus: English text that ships inside CPython itself.

Two sources, both present in every CPython install (Colab included), so training works with no
download and no network:

1. `pydoc_data.topics.topics` — the language reference pages `help()` shows, one document per
   topic, sorted by topic name;
2. the module, class and function docstrings of the standard library's `.py` files (walked in
   sorted order; tests, idlelib, lib2to3, turtledemo and site-packages left out), one document per
   docstring of at least `MIN_DOCSTRING_CHARS` characters after `inspect.cleandoc`.

Exact duplicates are dropped, keeping the first. The result is about 2 MB. It is deterministic *per
interpreter*: the same Python version gives the same documents in the same order, but 3.11 and 3.12
ship different docs and stdlib, so their corpora differ (a tokenizer trained on one is still valid
on the other; only the text it was trained on differs).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import os
import sysconfig
import warnings
from collections.abc import Iterator

from zoo.errors import ZooValueError

MIN_DOCSTRING_CHARS = 200
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo",
     "__pycache__"}
)
SPLITS = ("train", "validation")

_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_KINDS = {ast.Module: "module", ast.ClassDef: "class"}  # otherwise a (async) function or method


def builtin_documents() -> list[str]:
    """Return the embedded corpus: pydoc topics, then long stdlib docstrings, deduplicated."""
    return list(_builtin_documents())


def document_kinds() -> dict[str, str]:
    """Where each builtin document comes from: "topic" (pydoc), or what owns the docstring: "module",
    "class" or "function" (labels for fine-tuning tasks)."""
    return dict(_builtin_sources())


@functools.cache
def _builtin_documents() -> tuple[str, ...]:
    # Cached as a tuple so callers that mutate the returned list cannot change the cache.
    return tuple(doc for doc, _ in _builtin_sources())


@functools.cache
def _builtin_sources() -> tuple[tuple[str, str], ...]:
    pairs = [*((t, "topic") for t in _pydoc_topics()), *_stdlib_docstrings(sysconfig.get_paths()["stdlib"])]
    first: dict[str, str] = {}
    for doc, kind in pairs:  # dicts keep insertion order: first occurrence wins
        first.setdefault(doc, kind)
    return tuple(first.items())


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _stdlib_docstrings(root: str) -> Iterator[tuple[str, str]]:
    for path in _python_files(root):
        yield from _file_docstrings(path)


def _python_files(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorting in place makes os.walk's order, and so the corpus order, independent of the
        # filesystem's directory order.
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _file_docstrings(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, "rb") as f:
            source = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 3.12 warns on invalid escapes in old stdlib files
            tree = ast.parse(source, filename=path)
    except (OSError, SyntaxError, ValueError, RecursionError):
        return []  # a file this interpreter cannot parse contributes nothing
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, _DOCSTRING_OWNERS):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                doc = inspect.cleandoc(doc)
                if len(doc) >= MIN_DOCSTRING_CHARS:
                    docs.append((doc, _KINDS.get(type(node), "function")))
    return docs


def split_documents(
    docs: list[str], valid_fraction: float = 0.02, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split documents into (train, validation) by a stable hash of each document's text."""
    if not 0.0 < valid_fraction < 1.0:
        raise ZooValueError(f"valid_fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    # A document's side depends only on its own text and the seed, so adding or removing other
    # documents never moves it.
    scores = [_hash_fraction(doc, seed) for doc in docs]
    in_valid = [score < valid_fraction for score in scores]
    if len(docs) >= 2 and not any(in_valid):
        in_valid[scores.index(min(scores))] = True
    if len(docs) >= 2 and all(in_valid):
        in_valid[scores.index(max(scores))] = False
    train = [doc for doc, v in zip(docs, in_valid) if not v]
    valid = [doc for doc, v in zip(docs, in_valid) if v]
    return train, valid


def _hash_fraction(text: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}\0{text}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def builtin_split(split: str) -> list[str]:
    """Return the 'train' or 'validation' documents of the embedded corpus."""
    if split not in SPLITS:
        raise ZooValueError(f"unknown split {split!r} of the builtin corpus; use 'train' or 'validation'")
    train, valid = split_documents(builtin_documents())
    return train if split == "train" else valid
