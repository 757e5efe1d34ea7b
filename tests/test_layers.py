"""The package's layer rules: import-linter's contracts hold (and catch a back-edge), the pure layers do no
I/O, modules stay small, and every function-local import says why it is lazy."""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ppplan"
PURE_LAYERS = ("core", "partitioner")
MAX_MODULE_LINES = 400

pytest.importorskip("importlinter", reason="import-linter is a dev dependency: pip install -e '.[dev]'")


# --- import-linter -------------------------------------------------------------------------------------------


def _lint_imports(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``lint-imports`` console script of this interpreter (no cache, so nothing is written)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports not found next to the interpreter or on PATH"
    env = dict(os.environ)
    if pythonpath is None:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [exe, "--no-cache", "--no-logo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _contract_count() -> int:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return len(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def _kept_broken(output: str) -> tuple[int, int]:
    m = re.search(r"Contracts: (\d+) kept, (\d+) broken", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))


def test_import_contracts_kept_on_the_tree() -> None:
    res = _lint_imports(cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert _kept_broken(out) == (_contract_count(), 0), out
    assert "BROKEN" not in out


def test_import_contracts_catch_a_back_edge(tmp_path: Path) -> None:
    for src in PACKAGE.rglob("*.py"):
        dst = tmp_path / src.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    config = tmp_path / "pyproject.toml"
    shutil.copyfile(ROOT / "pyproject.toml", config)

    # The copy, not the editable install of the checkout, is what gets imported (and so analysed).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path)}
    where = subprocess.run(
        [sys.executable, "-c", "import ppplan; print(ppplan.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(tmp_path.resolve()), where

    clean = _lint_imports(str(config), cwd=tmp_path, pythonpath=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    (tmp_path / "ppplan" / "core" / "_back_edge.py").write_text("import ppplan.api.cli\n")
    broken = _lint_imports(str(config), cwd=tmp_path, pythonpath=tmp_path)
    out = broken.stdout + broken.stderr
    assert broken.returncode != 0, out
    assert "ppplan.core is not allowed to import ppplan.api" in out, out
    assert "ppplan.core._back_edge -> ppplan.api.cli" in out, out
    assert _kept_broken(out)[1] >= 1, out


# --- the pure layers do no I/O --------------------------------------------------------------------------------

IO_BUILTINS = frozenset({"open", "print", "input"})
IO_METHODS = frozenset({"read_text", "write_text", "read_bytes", "write_bytes", "open"})
IO_FUNCTIONS = frozenset({"io.open", "json.load", "json.dump", "sys.stdin", "sys.stdout", "sys.stderr"})
IO_MODULES = ("subprocess", "socket")
OS_FILE_ENV = frozenset(
    {
        "environ", "environb", "getenv", "getenvb", "putenv", "unsetenv", "path", "open", "fdopen", "read", "write",
        "listdir", "scandir", "walk", "fwalk", "stat", "lstat", "remove", "unlink", "rename", "renames", "replace",
        "mkdir", "makedirs", "rmdir", "removedirs", "chdir", "getcwd", "getcwdb", "chmod", "chown", "link", "symlink",
        "readlink", "truncate", "access", "utime", "system", "popen", "fork", "kill",
    }
)  # fmt: skip

# The one read a pure layer may do: ppplan.core.gpus reads the GPU catalog, ppplan.core's own package data, as
# (resources.files("ppplan.core") / "data" / "gpus.json").read_text().
CATALOG_MODULE = "ppplan.core.gpus"
CATALOG_PACKAGE = "ppplan.core"


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name it was imported as (``import os.path`` binds ``os``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(expr: ast.expr, aliases: dict[str, str]) -> str | None:
    """Dotted name of ``a.b.c`` through the module's imports; builtins keep their bare name."""
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    return ".".join([aliases.get(expr.id, expr.id), *reversed(parts)])


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return (
        len(sides) == 2
        and isinstance(node.test.ops[0], ast.Eq)
        and any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
        and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    )


def _allowed_data_read(call: ast.Call, module: str, aliases: dict[str, str]) -> ast.Call | None:
    """The ``resources.files(...)`` call under ``call`` when ``call`` is the allowed catalog read, else None."""
    if module != CATALOG_MODULE or not isinstance(call.func, ast.Attribute) or call.func.attr != "read_text":
        return None
    root = call.func.value
    while isinstance(root, ast.BinOp) and isinstance(root.op, ast.Div):
        if not isinstance(root.right, ast.Constant):
            return None
        root = root.left
    if (
        isinstance(root, ast.Call)
        and _dotted(root.func, aliases) == "importlib.resources.files"
        and len(root.args) == 1
        and isinstance(root.args[0], ast.Constant)
        and root.args[0].value == CATALOG_PACKAGE
        and not root.keywords
    ):
        return root
    return None


def _is_io_name(name: str) -> bool:
    parts = name.split(".")  # the I/O name itself, once, not each attribute reached through it
    return (
        name in IO_FUNCTIONS
        or (parts[0] in IO_MODULES and len(parts) == 1)
        or (parts[0] == "os" and len(parts) == 2 and parts[1] in OS_FILE_ENV)
    )


def _import_violations(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
    for name in names:
        if name.split(".")[0] in IO_MODULES or _is_io_name(".".join(name.split(".")[:2])):
            yield f"line {node.lineno}: imports {name}"


def _call_violation(node: ast.Call, aliases: dict[str, str], in_main_guard: set[int]) -> str | None:
    name = _dotted(node.func, aliases)
    if name in IO_BUILTINS and not (name == "print" and id(node) in in_main_guard):
        return f"line {node.lineno}: calls {name}()"
    if isinstance(node.func, ast.Attribute) and node.func.attr in IO_METHODS and name not in IO_FUNCTIONS:
        return f"line {node.lineno}: calls .{node.func.attr}()"
    if name and name.startswith("importlib.resources."):
        return f"line {node.lineno}: calls {name}() (only {CATALOG_MODULE} reads package data)"
    return None


def io_violations(source: str, module: str) -> list[str]:
    """I/O in ``source`` (the module ``module``): ``"line N: what"`` for each offending call or reference."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    in_main_guard = {id(n) for stmt in tree.body if _is_main_guard(stmt) for n in ast.walk(stmt)}
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (files_call := _allowed_data_read(node, module, aliases)) is not None:
            allowed |= {id(node), id(files_call)}

    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in allowed:
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(_import_violations(node))
        elif isinstance(node, ast.Call):
            found.extend(filter(None, [_call_violation(node, aliases, in_main_guard)]))
        elif isinstance(node, ast.Attribute | ast.Name) and isinstance(node.ctx, ast.Load):
            name = _dotted(node, aliases)
            if name and (isinstance(node, ast.Attribute) or node.id in aliases) and _is_io_name(name):
                found.append(f"line {node.lineno}: uses {name}")
    return sorted(set(found), key=lambda s: int(s.split()[1].rstrip(":")))


def _modules(*subpackages: str) -> Iterator[tuple[str, Path]]:
    roots = [PACKAGE / s for s in subpackages] if subpackages else [PACKAGE]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def test_pure_layers_do_no_io() -> None:
    offenders = {
        module: found for module, path in _modules(*PURE_LAYERS) if (found := io_violations(path.read_text(), module))
    }
    assert not offenders, "I/O in the pure layers:\n" + "\n".join(
        f"  {m}: {f}" for m, fs in offenders.items() for f in fs
    )


CATALOG_READ = (
    'from importlib import resources\nDATA = (resources.files("ppplan.core") / "data" / "x.json").read_text()\n'
)


@pytest.mark.parametrize(
    ("source", "module", "expect"),
    [
        ('open("x")\n', "ppplan.core.m", "calls open()"),
        ("print(1)\n", "ppplan.partitioner.m", "calls print()"),
        ("x = input()\n", "ppplan.core.m", "calls input()"),
        ("def f(p):\n    return p.read_text()\n", "ppplan.core.m", "calls .read_text()"),
        ("def f(p, s):\n    p.write_bytes(s)\n", "ppplan.core.m", "calls .write_bytes()"),
        ('import os\nX = os.environ.get("A")\n', "ppplan.core.m", "uses os.environ"),
        ('import os as _o\nX = _o.getenv("A")\n', "ppplan.core.m", "uses os.getenv"),
        ("from os import listdir\n", "ppplan.core.m", "imports os.listdir"),
        ("import os.path\n", "ppplan.core.m", "imports os.path"),
        ('import subprocess\nsubprocess.run(["x"])\n', "ppplan.core.m", "imports subprocess"),
        ("import socket\n", "ppplan.partitioner.m", "imports socket"),
        ('import sys\nsys.stdout.write("x")\n', "ppplan.core.m", "uses sys.stdout"),
        ("import json\ndef f(fp):\n    return json.load(fp)\n", "ppplan.core.m", "uses json.load"),
        (CATALOG_READ, "ppplan.core.costmodel", "calls .read_text()"),
        (CATALOG_READ.replace('"ppplan.core"', '"ppplan.profiler"'), "ppplan.core.gpus", "calls .read_text()"),
        (CATALOG_READ.replace(".read_text()", ".read_bytes()"), "ppplan.core.gpus", "calls .read_bytes()"),
        (CATALOG_READ + 'Y = resources.files("ppplan.core").joinpath("y")\n', "ppplan.core.gpus", "resources.files"),
        ('def f():\n    if __name__ == "__main__":\n        print(1)\n', "ppplan.partitioner.plan", "calls print()"),
    ],
)
def test_io_check_flags(source: str, module: str, expect: str) -> None:
    found = io_violations(source, module)
    assert any(expect in f for f in found), found


@pytest.mark.parametrize(
    ("source", "module"),
    [
        (CATALOG_READ, "ppplan.core.gpus"),
        ('import json\nif __name__ == "__main__":\n    print(json.dumps({}))\n', "ppplan.partitioner.plan"),
        ("import json\nX = json.loads('{}')\nY = json.dumps(X)\n", "ppplan.core.m"),
        ("import os\nSEP = os.sep\n", "ppplan.core.m"),
        ("def f(path):\n    return path\n", "ppplan.core.m"),
    ],
)
def test_io_check_allows(source: str, module: str) -> None:
    assert io_violations(source, module) == []


# --- module size and lazy imports ------------------------------------------------------------------------------


def test_no_module_above_400_lines() -> None:
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for _, path in _modules()}
    offenders = {p: n for p, n in sorted(sizes.items()) if n > MAX_MODULE_LINES}
    assert not offenders, f"modules above {MAX_MODULE_LINES} lines (split them): " + ", ".join(
        f"{p} ({n})" for p, n in offenders.items()
    )


LAZY_COMMENT = re.compile(r"#\s*lazy:\s*\S")


def unmarked_local_imports(source: str) -> list[int]:
    """Lines of function-local imports whose first line lacks a trailing ``# lazy: <reason>`` comment."""
    comments = {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    lines: set[int] = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom) and not LAZY_COMMENT.search(
                    comments.get(node.lineno, "")
                ):
                    lines.add(node.lineno)
    return sorted(lines)


def test_function_local_imports_say_why() -> None:
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}:{line}: {path.read_text().splitlines()[line - 1].strip()}"
        for _, path in _modules()
        for line in unmarked_local_imports(path.read_text())
    ]
    assert not offenders, (
        f"{len(offenders)} function-local imports without a trailing '# lazy: <reason>' "
        "(hoist them to the module top, or say which heavy import they avoid):\n" + "\n".join(offenders)
    )


def test_lazy_import_check_reads_comments_not_strings() -> None:
    source = (
        "import json\n"
        "def f():\n"
        "    import torch  # lazy: planning a preset must not import torch\n"
        "    from ortools.sat.python import (  # lazy: CP-SAT only when asked for\n"
        "        cp_model,\n"
        "    )\n"
        "    import math\n"
        "    from a import b  # imports torch\n"
        '    s = "# lazy: not a comment"; import c\n'
        "    class K:\n"
        "        def g(self):\n"
        "            import d  # lazy:\n"
    )
    assert unmarked_local_imports(source) == [7, 8, 9, 12]
