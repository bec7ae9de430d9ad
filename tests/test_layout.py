"""The project's shape: no import cycles, cheap model imports, one Family value per family."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

import models
from zoo.family import Family


def _project_modules() -> dict[str, str]:
    """Module name -> path of every module of the project (zoo, models, the two scripts)."""
    found = {"train": "train.py", "eval": "eval.py"}
    for package in ("zoo", "models"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.relpath(os.path.join(folder, name), ROOT)
                    found[path[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
    return found


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """Project modules that `module` imports anywhere in its file, function-local imports included."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # a child naming its package
                targets.add(name)
    return targets


def test_no_import_cycles_among_the_projects_modules():
    modules = _project_modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    for start in graph:  # depth-first search for a path back to `start`
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                assert nxt != start, f"import cycle: {' -> '.join(path + [start])}"
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))


def test_importing_models_and_zoo_loads_no_checkpoint_optimizer_or_progress_code():
    code = ("import models.gpt, models.bert, models.t5, zoo, sys; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('orbax', 'optax', 'tqdm')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(models.FAMILIES))
def test_each_family_is_one_complete_family_value(name):
    family = models.FAMILIES[name]
    assert isinstance(family, Family) and family.name == name
    required = [f for f in Family.__dataclass_fields__.values() if f.default is not None]
    assert all(callable(getattr(family, f.name)) or f.name in ("name", "presets", "train_defaults", "hf")
               for f in required)
    assert all(isinstance(cfg, family.Config) for cfg in family.presets.values())
    assert models.family_for_hf(family.hf.model_types[0]) is family
