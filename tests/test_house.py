"""House rules of the source tree: small modules and functions, no import circle, comments that say why.

Each rule is checked statically (``ast`` and the source text), so the whole file runs in a second.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "clothsim"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 100
# Modules allowed over the limits (none: add one here only with the reason beside it).
BEING_SPLIT: set[str] = set()
# "measured" next to a number: a figure of a past measurement, which belongs in docs/benchmarks.md.
MEASURED_FIGURE = re.compile(r"measured\W{0,3}(?:\w+\W{1,3}){0,4}?\d|\d(?:\.\d+)?\s*\S{0,6}\s+measured", re.I)


def _sources() -> list[tuple[str, Path]]:
    return [(path.relative_to(PACKAGE).as_posix(), path) for path in sorted(PACKAGE.rglob("*.py"))]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_split_list_names_modules_that_exist():
    names = {name for name, _ in _sources()}
    assert BEING_SPLIT <= names, f"no such modules: {sorted(BEING_SPLIT - names)}"


def test_every_module_is_at_most_700_lines():
    long = [f"{name}: {len(path.read_text(encoding='utf-8').splitlines())} lines" for name, path in _sources()
            if name not in BEING_SPLIT and len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_every_function_is_at_most_100_lines():
    long = []
    for name, path in _sources():
        if name in BEING_SPLIT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _comments_and_docstrings(source: str) -> list[tuple[int, str]]:
    """Every comment and docstring of a module, with the line it starts on."""
    found = [(token.start[0], token.string) for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.append((body[0].lineno, body[0].value.value))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.append((node.lineno, node.value.value))  # attribute docstrings (#: comments are comments)
    return found


def test_no_comment_or_docstring_quotes_a_measured_figure():
    """Figures of past measurements live in docs/benchmarks.md, with the command that gives them; the code
    says why it chose, and links there."""
    found = []
    for name, path in _sources():
        if name in BEING_SPLIT:
            continue
        for line, text in _comments_and_docstrings(path.read_text(encoding="utf-8")):
            flat = " ".join(text.split())
            match = MEASURED_FIGURE.search(flat)
            if match:
                found.append(f"{name}:{line}: ...{match.group(0)}...")
    assert not found, "figures in comments (move them to docs/benchmarks.md):\n" + "\n".join(found)


def test_the_figure_rule_sees_figures():
    for text in ("measured 8.2 for a 64-megapixel JPEG", "(measured: 4.9 GiB resident)",
                 "measured at 1M x 1280: 27-29 ms", "0.4 ms measured on one thread"):
        assert MEASURED_FIGURE.search(text), text
    for text in ("the memory budget is measured by the warm-up", "backends measured on this gallery",
                 "the value measured in the README"):
        assert not MEASURED_FIGURE.search(text), text


def _module_imports(path: Path, name: str) -> set[str]:
    """The clothsim modules ``path`` imports when it is loaded (top level, not under TYPE_CHECKING and
    not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else ():
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("clothsim"))
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - sub.level + 1] + ([base] if base else []))
                if base.startswith("clothsim"):
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in sub.names)
    return found


def test_no_import_circle_between_modules():
    """Built from each module's top-level imports (not those under ``if TYPE_CHECKING:`` or in functions)."""
    modules = {_module_name(path): path for _, path in _sources()}
    graph = {m: {d for d in _module_imports(p, m) if d in modules and d != m} for m, p in modules.items()}
    # A package's __init__ is loaded before its modules, so "a.b imports a" is no circle worth reporting.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, "import circles between modules:\n" + "\n".join(" -> ".join(c) for c in circles)
