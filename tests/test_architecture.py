"""The package's layers (docs/architecture.md): imports point one way, modules stay small.

Every `import omnisift_edge...` in the package, at module level or inside a function, is read from
the source with `ast` and checked against the layer table below: a unit may import only units of
lower layers (and itself). Strict layering also rules out import cycles between units.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "omnisift_edge"

# lowest first; units of one layer never import each other
LAYERS = (
    ("errors",),
    ("atomic", "paths"),
    ("omnisift_edge",),                             # the package root: __version__, UsageError
    ("artifact",),                                  # the export folder contract
    ("compress",),
    ("model", "compat"),                            # model loads the selector from compress
    ("runtime",),
    ("export", "engines", "profiling", "train", "serving", "live"),   # stages
    ("selftest", "doctor"),                         # compositions of stages
    ("cli",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
BACKENDS = ("ort_pipeline", "trt_pipeline", "torch_pipeline")
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported omnisift_edge module) for every import statement in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "omnisift_edge"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _name(path).split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            else:
                module = node.module or ""
            if module.split(".")[0] != "omnisift_edge":
                continue
            if module == "omnisift_edge":      # `from omnisift_edge import runtime` names a unit
                found += [(node.lineno, f"omnisift_edge.{a.name}") if f"{a.name}" in RANK else (node.lineno, module)
                          for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def test_every_unit_has_a_layer():
    units = {_unit(_name(p)) for p in _modules()}
    assert not units - RANK.keys(), f"add these to LAYERS in tests/test_architecture.py: {units - RANK.keys()}"


def test_imports_point_down_the_layers():
    wrong = []
    for path in _modules():
        here = _unit(_name(path))
        for line, module in _imports(path):
            there = _unit(module)
            if there != here and RANK[there] >= RANK[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}, layer {RANK[here]}) imports "
                             f"{module} ({there}, layer {RANK[there]})")
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def test_runtime_backends_never_import_each_other():
    wrong = []
    for name in BACKENDS:
        path = PACKAGE / "runtime" / f"{name}.py"
        for line, module in _imports(path):
            if module.rsplit(".", 1)[-1] in BACKENDS and not module.endswith(name):
                wrong.append(f"runtime/{name}.py:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_catches_a_planted_violation(tmp_path):
    """The checker itself: a function-level import of the export stage in a runtime module is found."""
    fake = tmp_path / "bad.py"
    fake.write_text("def f():\n    from omnisift_edge.export.stage import export\n")
    imports = _imports(fake)
    assert imports == [(2, "omnisift_edge.export.stage")]
    assert RANK[_unit(imports[0][1])] > RANK["runtime"]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it (aim under {MAX_LINES})"


# functions over MAX_FUNCTION_LINES that are allowed for now: none (issue 24 split the last ones)
LONG_FUNCTIONS_BEING_SPLIT: set[tuple[str, str]] = set()
MAX_FUNCTION_LINES = 80
FOLDER_MOVES = {("os", "rename"), ("os", "renames"), ("os", "replace"), ("shutil", "move")}


def _long_functions(path: Path) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `path` longer than MAX_FUNCTION_LINES (def to last line)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def _renames(path: Path) -> list[tuple[int, str]]:
    """(line, call) of every call that can move a folder: os.rename/renames/replace, shutil.move, and
    `x.rename(y)` / `x.replace(y)` with one argument (pathlib's; str.replace takes two)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        if (owner, node.func.attr) in FOLDER_MOVES or (
                owner not in ("os", "shutil") and node.func.attr in ("rename", "replace")
                and len(node.args) == 1 and not node.keywords):
            found.append((node.lineno, ast.unparse(node.func)))
    return found


def test_no_function_is_over_80_lines():
    long = [f"{path.relative_to(PACKAGE)}:{name} ({lines} lines)" for path in _modules()
            for name, lines in _long_functions(path)
            if (str(path.relative_to(PACKAGE)), name) not in LONG_FUNCTIONS_BEING_SPLIT]
    assert not long, f"split these into named steps (at most {MAX_FUNCTION_LINES} lines, aim under 60): {long}"


def test_folders_are_renamed_only_in_atomic():
    """Issue 24/26: one staged-folder helper (omnisift_edge/atomic.py) swaps folders in, with its owner check,
    rollback and symlink handling; a rename elsewhere is a second, weaker copy of it."""
    moves = [f"{path.relative_to(PACKAGE)}:{line} {call}" for path in _modules() if path != PACKAGE / "atomic.py"
             for line, call in _renames(path)]
    assert not moves, f"use omnisift_edge.atomic (staged_folder, publish_folder, move_file, remove_folder): {moves}"


def test_the_checks_catch_a_planted_long_function_and_rename(tmp_path):
    fake = tmp_path / "bad.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    fake.write_text(f"import os\nimport shutil\n\ndef f(staging, out):\n{body}    staging.rename(out)\n"
                    "    os.replace(staging, out)\n    shutil.move(staging, out)\n    'a'.replace('a', 'b')\n")
    assert _long_functions(fake) == [("f", MAX_FUNCTION_LINES + 5)]
    assert [call for _, call in _renames(fake)] == ["staging.rename", "os.replace", "shutil.move"]


def _manifest_subscripts(path: Path) -> list[int]:
    """Lines of `manifest[...]` (a name or attribute called manifest, subscripted) in `path`: the manifest's
    JSON is read and written only by artifact/ (artifact.manifest.Manifest and its records)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            value = node.value
            name = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else ""
            if name == "manifest":
                found.append(node.lineno)
    return found


def test_manifest_subscripts_only_in_artifact():
    artifact = PACKAGE / "artifact"
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in _modules() if artifact not in path.parents
             for line in _manifest_subscripts(path)]
    assert not wrong, ("read the typed artifact.manifest.Manifest instead of subscripting the manifest dict:\n"
                       + "\n".join(wrong))


def test_the_manifest_subscript_check_catches_a_planted_one(tmp_path):
    fake = tmp_path / "bad.py"
    fake.write_text("def f(manifest, self):\n    return manifest['dims'], self.manifest['graphs'], manifest.dims\n")
    assert _manifest_subscripts(fake) == [2, 2]
