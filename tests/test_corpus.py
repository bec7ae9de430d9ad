"""Tests of the embedded corpus: size, determinism, and the hash-based train/validation split."""

import pytest

from zoo import corpus


def test_builtin_corpus_is_large_english_text():
    docs = corpus.builtin_documents()
    assert sum(map(len, docs)) > 1_500_000
    assert len(docs) == len(set(docs)), "exact duplicates must be removed"
    assert all(isinstance(d, str) and d for d in docs)
    assert " the " in docs[0]


def test_builtin_documents_are_deterministic_and_not_shared():
    first = corpus.builtin_documents()
    first.append("mutating the returned list must not change the cache")
    assert corpus.builtin_documents() == first[:-1]


def test_stdlib_walk_is_sorted_and_skips_excluded_dirs():
    import os
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    files = list(corpus._python_files(root))
    assert len(files) > 200
    parts = [os.path.relpath(f, root).split(os.sep) for f in files]
    assert not any(set(p[:-1]) & corpus.EXCLUDED_DIRS for p in parts)
    # Within each directory, files come in sorted order.
    by_dir: dict[str, list[str]] = {}
    for f in files:
        by_dir.setdefault(os.path.dirname(f), []).append(os.path.basename(f))
    assert all(names == sorted(names) for names in by_dir.values())


def test_builtin_split_is_disjoint_covering_and_nonempty():
    train, valid = corpus.builtin_split("train"), corpus.builtin_split("validation")
    assert valid and train
    assert not set(train) & set(valid)
    assert sorted(train + valid) == sorted(corpus.builtin_documents())
    assert corpus.builtin_split("validation") == valid


def test_builtin_split_rejects_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        corpus.builtin_split("test")


def test_split_is_stable_when_documents_are_added():
    docs = [f"document number {i}" for i in range(500)]
    train, valid = corpus.split_documents(docs, valid_fraction=0.1)
    more_train, more_valid = corpus.split_documents(docs + [f"new {i}" for i in range(100)], 0.1)
    assert set(valid) <= set(more_valid)
    assert set(train) <= set(more_train)
    assert 20 <= len(valid) <= 80  # ~10% of 500


def test_split_depends_on_seed():
    docs = [f"document number {i}" for i in range(500)]
    assert corpus.split_documents(docs, 0.1, seed=0) != corpus.split_documents(docs, 0.1, seed=1)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_small_split_has_both_sides(n):
    train, valid = corpus.split_documents([f"doc {i}" for i in range(n)], valid_fraction=0.001)
    assert len(valid) >= 1 and len(train) >= 1 and len(train) + len(valid) == n


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="valid_fraction"):
        corpus.split_documents(["a", "b"], valid_fraction=1.0)
