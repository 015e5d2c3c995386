"""The README and docs/ work as written.

Every fenced ``bash`` or ``python`` block that directly follows a ``<!-- runnable -->`` line in
README.md or docs/*.md is run, one test per block, named ``file:line`` (the line of its opening fence).

How a block runs:

- Each page gets one workspace: a fresh temporary folder that mirrors the repository root (a symbolic
  link to every top-level entry git tracks, plus ``.venv``) and has ``../shared`` beside it pointing at
  the repository's ``../shared``. A block runs with that mirror as its working directory, so the
  relative paths a user types from the repository root (``src/...``, ``../shared/data/...``,
  ``.venv/bin/clothsim``) work, while whatever a block writes (``index/``, ``catalog.csv``) lands in the
  temporary folder and is removed with it, never in the repository.
- The blocks of a page share that workspace and run in page order, as a reader runs them: a page may
  build an index in one block and search it in the next. When a block is run alone (``-k``), the
  blocks before it on its page run first; a failure there is reported as the prerequisite that failed.
- bash blocks run under ``bash -euo pipefail`` with the repository's ``.venv/bin`` first on PATH;
  python blocks run with the repository's ``.venv/bin/python`` (this interpreter when there is no
  ``.venv``). PYTHONPATH starts with this checkout's ``src``. Each block has a timeout.
- Blocks that read ``../shared`` are skipped with a reason when it is absent.

Also: the README stays short (a front door, at most 200 lines), every relative link resolves, and the
pages do not talk about how they were written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO / ".." / "shared").resolve()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
BLOCK_TIMEOUT_S = 150
README_MAX_LINES = 200
# Words about how the docs were made, not about clothsim. "session" alone would also match ONNX
# Runtime's InferenceSession in a code sample, which is fine, hence the look-behind.
FORBIDDEN = re.compile(r"(?<!inference)session|first landing|the issue", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str  # "bash" or "python"
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _blocks_of(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        match = re.fullmatch(r"```(bash|sh|python)", fence)
        if not match:
            raise AssertionError(f"{page.relative_to(REPO)}:{i + 1}: {MARKER} must be followed by a "
                                 f"```bash or ```python fence, found {fence!r}")
        body = []
        for j in range(i + 2, len(lines)):
            if lines[j].strip() == "```":
                break
            body.append(lines[j])
        else:
            raise AssertionError(f"{page.relative_to(REPO)}:{i + 2}: unclosed code block")
        language = "python" if match.group(1) == "python" else "bash"
        blocks.append(Block(page, i + 2, language, "\n".join(body) + "\n"))
    return blocks


BLOCKS = [block for page in PAGES for block in _blocks_of(page)]


def _tracked_top_level() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=30).stdout
        names = {line.split("/", 1)[0] for line in out.splitlines() if line}
    except (OSError, subprocess.SubprocessError):
        names = {p.name for p in REPO.iterdir()}
    return names | {".venv"}


class _Workspace:
    """A page's mirror of the repository root in a temporary folder, and which blocks have run there."""

    def __init__(self, root: Path):
        self.repo = root / REPO.name
        self.repo.mkdir(parents=True)
        for name in sorted(_tracked_top_level()):
            if (REPO / name).exists():
                (self.repo / name).symlink_to(REPO / name)
        if SHARED.is_dir():
            (root / "shared").symlink_to(SHARED)
        self.done: dict[int, str | None] = {}  # block line -> None (passed) or the failure


@pytest.fixture(scope="module")
def workspaces():
    root = Path(tempfile.mkdtemp(prefix="clothsim-docs-"))
    spaces: dict[Path, _Workspace] = {}

    def get(page: Path) -> _Workspace:
        if page not in spaces:
            spaces[page] = _Workspace(root / page.stem)
        return spaces[page]

    yield get
    shutil.rmtree(root, ignore_errors=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO / "src"), env.get("PYTHONPATH", "")] if p)
    env["MPLBACKEND"] = "Agg"
    env.setdefault("CLOTHSIM_SKIP_APT", "1")
    return env


def _run(block: Block, space: _Workspace) -> str | None:
    """Run one block in its page's workspace; None when it passed, else what went wrong."""
    script = space.repo.parent / f"block-{block.line}.{'py' if block.language == 'python' else 'sh'}"
    script.write_text(block.code, encoding="utf-8")
    if block.language == "python":
        venv_python = REPO / ".venv" / "bin" / "python"
        command = [str(venv_python) if venv_python.exists() else sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", str(script)]
    try:
        result = subprocess.run(command, cwd=space.repo, env=_env(), capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"timed out after {BLOCK_TIMEOUT_S} s"
    if result.returncode != 0:
        return (f"exit status {result.returncode}\n--- block ---\n{block.code}"
                f"--- stdout (end) ---\n{result.stdout[-3000:]}\n--- stderr (end) ---\n{result.stderr[-3000:]}")
    return None


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_runnable_block(block: Block, workspaces):
    if "../shared" in block.code and not SHARED.is_dir():
        pytest.skip(f"{block.id} reads ../shared, which is absent ({SHARED})")
    space = workspaces(block.page)
    for earlier in (b for b in BLOCKS if b.page == block.page and b.line < block.line):
        if earlier.line not in space.done:
            space.done[earlier.line] = _run(earlier, space)
        if space.done[earlier.line] is not None:
            pytest.fail(f"{block.id}: the earlier block {earlier.id} on its page failed: "
                        f"{space.done[earlier.line]}")
    failure = _run(block, space)
    space.done[block.line] = failure
    if failure is not None:
        pytest.fail(f"{block.id} failed: {failure}")


def test_blocks_found():
    pages = {b.page.name for b in BLOCKS}
    assert "README.md" in pages and len(BLOCKS) >= 10, [b.id for b in BLOCKS]


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_no_words_about_how_it_was_written(page: Path):
    found = [f"{page.relative_to(REPO)}:{n}: {line.strip()}"
             for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
             if FORBIDDEN.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page: Path):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links to missing files: {broken}"


def test_pages_are_not_ignored_by_git():
    pages = [str(p.relative_to(REPO)) for p in PAGES] + [
        str(p.relative_to(REPO)) for p in (REPO / "docs" / "images").glob("*")]
    try:
        result = subprocess.run(["git", "check-ignore", *pages], cwd=REPO, capture_output=True,
                                text=True, timeout=30)
    except OSError:
        pytest.skip("git is not available")
    assert result.stdout.strip() == "", f".gitignore hides documentation files: {result.stdout}"
