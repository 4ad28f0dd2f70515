"""The docs check (``make docs``): README.md and docs/*.md are kept honest without running anything.

- Every relative link and image resolves: the file exists and a ``#anchor`` names a heading of the
  target page (GitHub's heading slugs) or an ``<a id=...>``/``<a name=...>`` in it.
- Every command shown in a fenced ``bash`` block (continuation lines joined) that runs
  ``glide ...``, ``python pipelines/...`` (also under ``torchrun`` / ``srun``),
  ``python benchmarks/...``, ``make ...`` or ``dvc exp run -S ...`` parses: the ``glide`` argument
  parser on the shown arguments, the Hydra config composed in-process with the shown overrides (as
  the pipeline composes it: a renamed config key fails), a script's argument parser as its
  ``add_argument`` calls declare it (read from the source: nothing is imported or run), the
  Makefile's targets. The same holds for such commands quoted inline in the prose. Placeholders
  the user fills in (``/path/to/coco``) parse like any path: nothing is read or run.
- README.md stays under 15,000 bytes.

Each failure names the file, the line and the link or command.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_BYTES = 15_000

# Commands shown in the docs that are deliberately not parsed, with the reason. Keep it small.
UNCHECKED: dict[str, str] = {}

SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class Shown:
    """A link or command as the docs show it: where, and the text."""

    page: Path
    line: int
    text: str

    def where(self) -> str:
        return f"{_rel(self.page)}:{self.line}"


def _rel(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


# ----------------------------------------------------------------------------- markdown reading


def fenced_blocks(text: str) -> Iterator[tuple[str, int, list[str]]]:
    """``(info, first line number, lines)`` of each fenced code block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match.group(2), match.group(3).lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j])
            j += 1
        yield info, i + 2, body
        i = j + 1


def _without_fences(text: str) -> str:
    """``text`` with each fenced block (fences and body) blanked; line numbers kept."""
    lines = text.split("\n")
    for _, start, body in fenced_blocks(text):
        for k in range(start - 2, min(start + len(body), len(lines))):
            lines[k] = ""
    return "\n".join(lines)


def prose(text: str) -> str:
    """``text`` with fenced blocks and inline code blanked out (line numbers kept)."""
    blank = _without_fences(text)
    return re.sub(r"`[^`]*`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), blank)


def inline_code(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, content)`` of each inline code span outside fenced blocks."""
    blank = _without_fences(text)
    for match in re.finditer(r"`([^`]+)`", blank):
        yield blank.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces as
    hyphens (github-slugger's rules)."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", heading)  # images
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    kept = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor of ``page``: heading slugs (repeats get -1, -2, ... as on GitHub) and HTML
    ``id``/``name`` attributes."""
    text = page.read_text(encoding="utf-8")
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _without_fences(text).split("\n"):
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = github_slug(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return frozenset(found)


# ----------------------------------------------------------------------------- links

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(page: Path) -> list[Shown]:
    text = prose(page.read_text(encoding="utf-8"))
    out = []
    for match in LINK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        out.append(Shown(page, line, match.group(1)))
    for match in re.finditer(r"<img\s[^>]*src=\"([^\"]+)\"", text):
        out.append(Shown(page, text.count("\n", 0, match.start()) + 1, match.group(1)))
    return out


def link_error(link: Shown) -> str | None:
    target = link.text
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
        return None
    path_part, _, anchor = target.partition("#")
    path = (link.page.parent / path_part).resolve() if path_part else link.page
    if not path.exists():
        return f"{path_part} does not exist"
    if not anchor:
        return None
    if path.suffix != ".md":
        return f"#{anchor} points into {path_part}, which is not a Markdown page"
    if anchor not in anchors(path):
        return f"no heading with anchor #{anchor} in {_rel(path)}"
    return None


# ----------------------------------------------------------------------------- commands


def commands(page: Path) -> list[Shown]:
    """The shell commands of ``page``'s fenced shell blocks (continuations joined, one entry per
    command of a ``&&`` / ``;`` / ``|`` chain) and the checkable commands quoted inline."""
    text = page.read_text(encoding="utf-8")
    out: list[Shown] = []
    for info, start, body in fenced_blocks(text):
        if info not in SHELL_BLOCKS:
            continue
        k = 0
        while k < len(body):
            first = k
            line = body[k]
            while line.rstrip().endswith("\\") and k + 1 < len(body):
                k += 1
                line = line.rstrip()[:-1] + " " + body[k].strip()
            k += 1
            line = re.sub(r"^\s*\$\s+", "", line)
            out.extend(Shown(page, start + first, part) for part in _split_chain(line))
    for line, code in inline_code(text):
        if re.match(r"(python (pipelines|benchmarks)/\S+\.py|make \S|dvc exp run )", code):
            out.extend(Shown(page, line, part) for part in _split_chain(code))
    return out


def _split_chain(line: str) -> list[str]:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return [line]  # unbalanced quotes: reported by the check
    parts: list[list[str]] = [[]]
    redirect = False
    for token in tokens:
        if redirect:  # the file a redirection names
            redirect = False
        elif token in SEPARATORS:
            parts.append([])
        elif re.match(r"^\d*(>>?|<)(&\d+)?$", token):  # > out.txt, 2>&1, < in.txt
            redirect = "&" not in token
        else:
            parts[-1].append(token)
    return [shlex.join(p) for p in parts if p]


def _tokens(text: str) -> list[str]:
    """``text`` split as the shell would; by whitespace when its quotes do not balance."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def classify(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(kind, arguments)`` of a command this check parses, ``None`` for others."""
    while argv and re.match(r"^[A-Za-z_]\w*=", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return None
    if argv[0] == "glide":
        return "glide", argv[1:]
    if argv[0] == "make":
        return "make", argv[1:]
    if argv[:3] == ["dvc", "exp", "run"]:
        return "dvc-exp", argv[3:]
    if argv[0] in {"python", "python3", "torchrun", "srun"} or argv[0].endswith("/python"):
        for i, token in enumerate(argv):
            if re.match(r"^(pipelines|benchmarks)/[\w/]+\.py$", token):
                return token, argv[i + 1 :]
            if token == "-m" and i + 1 < len(argv) and argv[i + 1] == "glide.cli":
                return "glide", argv[i + 2 :]
    return None


def command_error(shown: Shown) -> str | None:
    return _command_error(shown.text)


@cache  # the same command shown on several pages is parsed once
def _command_error(text: str) -> str | None:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        return f"not a shell command: {exc}"
    kind = classify(argv)
    if kind is None or text in UNCHECKED:
        return None
    name, args = kind
    try:
        if name == "glide":
            return _glide_error(args)
        if name == "make":
            missing = [t for t in args if not t.startswith("-") and "=" not in t]
            missing = [t for t in missing if t not in make_targets()]
            return f"no Makefile target {', '.join(missing)}" if missing else None
        if name == "dvc-exp":
            return _compose_error(_dvc_set_params(args), multirun=True)
        if name.startswith("pipelines/"):
            return _pipeline_error(name, args)
        return _argparse_error(REPO / name, args)
    except Exception as exc:  # a bug of the check itself still names the command
        return f"{type(exc).__name__}: {exc}"


def _glide_error(args: list[str]) -> str | None:
    from glide.cli import build_parser

    return _parse_quietly(build_parser(), args)


def _parse_quietly(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help exits 0
            return err.getvalue().strip().splitlines()[-1] if err.getvalue() else "rejected"
    return None


@cache
def make_targets() -> frozenset[str]:
    """The Makefile's targets (variables in target names expanded), parsed: ``make -n`` would
    run recipes of prerequisites."""
    text = (REPO / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Za-z_]\w*)\s*[:?]?=\s*(.*?)\s*$", text, flags=re.M))

    def expand(word: str) -> str:
        for _ in range(10):
            word = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), word)
        return word

    targets: set[str] = set()
    for line in text.split("\n"):
        match = re.match(r"^([^\s:#=\t][^:=]*?)\s*::?(?!=)", line)
        if match:
            targets.update(expand(w) for w in match.group(1).split())
    phony = re.findall(r"^\.PHONY:(.*)$", text, flags=re.M)
    targets.update(w for line in phony for w in line.split())
    return frozenset(t for t in targets if t and not re.match(r"^\.[A-Z_]+$", t))


def _dvc_set_params(args: list[str]) -> list[str]:
    overrides = []
    for i, token in enumerate(args):
        if token in {"-S", "--set-param"} and i + 1 < len(args):
            overrides.append(args[i + 1])
        elif token.startswith("--set-param="):
            overrides.append(token.split("=", 1)[1])
    return overrides


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """Each sweep override (``a=1,2``, ``range(4)``) as its first job's value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for parsed in OverridesParser.create().parse_overrides(overrides):
        if parsed.is_sweep_override():
            first = next(iter(parsed.sweep_string_iterator()))
            out.append(f"{parsed.get_key_element()}={first}")
        else:
            out.append(parsed.input_line)
    return out


def _compose_error(overrides: list[str], *, multirun: bool = False) -> str | None:
    from glide.config import compose

    try:
        if multirun:
            overrides = _first_of_sweeps(overrides)
        compose("config", overrides)
    except Exception as exc:
        return f"Hydra: {' '.join(str(exc).split())}"
    return None


HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i"}


def _pipeline_error(script: str, args: list[str]) -> str | None:
    if not (REPO / script).is_file():
        return f"{script} does not exist"
    if script == "pipelines/params.py":
        return _argparse_error(REPO / script, args)
    flags = [a for a in args if a.startswith("-")]
    multirun = "--multirun" in flags or "-m" in flags
    overrides = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in {"--multirun", "-m"}:
            continue
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif arg.startswith("-"):
            return f"{script} does not take {arg}"
        else:
            overrides.append(arg)
    if flags and script != "pipelines/prepare.py":  # only prepare hands flags to hydra.main
        return f"{script} takes Hydra overrides only, not {' '.join(flags)}"
    if any(o.startswith("hydra/launcher=submitit") for o in overrides) and not _has_submitit():
        # the `slurm` extra (not in `.[dev]`): check the command's own keys without the launcher
        overrides = [
            o for o in overrides if not o.startswith(("hydra/launcher=", "hydra.launcher."))
        ]
    if script == "pipelines/evaluate.py":  # the stage selects its evaluate group itself
        overrides = _stage_function(REPO / script, "_overrides")(overrides)
    elif script not in {"pipelines/prepare.py", "pipelines/train.py", "pipelines/register.py"}:
        return f"the docs check does not know how {script} reads its arguments"
    return _compose_error(overrides, multirun=multirun)


def _has_submitit() -> bool:
    import importlib.util

    return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


def _stage_function(path: Path, name: str) -> Callable[..., Any]:
    """Function ``name`` of a pipeline script, run from the script's own source without importing
    the script (which would import torch): only ``yaml`` and :mod:`glide.config` are in scope."""
    import yaml

    import glide.config

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not found:
        raise LookupError(f"{path.relative_to(REPO)} has no function {name}")
    namespace = {"yaml": yaml, "Path": Path, **vars(glide.config)}
    code = compile(ast.Module(body=found, type_ignores=[]), str(path), "exec")
    exec(code, namespace)  # the project's own source
    return namespace[name]


@cache
def script_parser(path: Path) -> argparse.ArgumentParser:
    """The argument parser a script's ``add_argument`` calls build, read from its source (nothing
    imported, so no torch): option names, positionals, ``action``, ``nargs``, ``choices`` and
    ``type`` where they are literals or ``int``/``float``/``str``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "add_argument"
    ]
    if not calls:
        raise LookupError(f"{path.relative_to(REPO)} has no add_argument calls")
    parser = argparse.ArgumentParser(prog=path.name)
    types = {"int": int, "float": float, "str": str}
    for call in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
        names = [ast.literal_eval(a) for a in call.args]
        kwargs: dict = {}
        for kw in call.keywords:
            if kw.arg == "type" and isinstance(kw.value, ast.Name) and kw.value.id in types:
                kwargs["type"] = types[kw.value.id]
            elif kw.arg in {"action", "nargs", "choices", "dest", "required"}:
                try:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:  # computed choices: any value passes
                    if kw.arg != "choices":
                        raise
        parser.add_argument(*names, **kwargs)
    return parser


def _argparse_error(path: Path, args: list[str]) -> str | None:
    if not path.is_file():
        return f"{path.relative_to(REPO)} does not exist"
    return _parse_quietly(script_parser(path), args)


# ----------------------------------------------------------------------------- the tests


def _report(kind: str, failures: list[str]) -> str:
    return f"{len(failures)} broken {kind} in the docs:\n" + "\n".join(failures)


def test_readme_is_short() -> None:
    size = README.stat().st_size
    assert size < README_MAX_BYTES, (
        f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: move detail into docs/"
    )


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / s.text.partition("#")[0]).resolve() for s in links(README)}
    missing = [p.relative_to(REPO) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md links no page {', '.join(map(str, missing))}"


def test_links_and_images_resolve() -> None:
    found = [link for page in PAGES for link in links(page)]
    assert len(found) > 50, "the link reader found almost no links: is it broken?"
    failures = [f"{s.where()}: ({s.text}): {e}" for s in found if (e := link_error(s))]
    assert not failures, _report("links", failures)


def test_shown_commands_parse() -> None:
    shown = [c for page in PAGES for c in commands(page)]
    checked = [c for c in shown if classify(_tokens(c.text)) is not None]
    assert len(checked) > 40, "the command reader found almost no commands: is it broken?"
    failures = [f"{c.where()}: {c.text}\n    {e}" for c in checked if (e := command_error(c))]
    assert not failures, _report("commands", failures)


@pytest.mark.parametrize(
    ("text", "broken"),
    [
        ("glide sample --prompt x --out y.png", False),
        ("glide sample --prompt x --out y.png --no-such-flag", True),
        ("python pipelines/train.py train=base train.max_steps=3", False),
        ("python pipelines/train.py train=base train.no_such_key=3", True),
        ("python pipelines/evaluate.py evaluate=coco30k evaluate.num_captions=8", False),
        ("python pipelines/evaluate.py evaluate.no_such_key=8", True),
        (
            "python pipelines/prepare.py --multirun prepare.num_parts=2 'prepare.part_index=range(2)'",
            False,
        ),
        ("python pipelines/prepare.py prepare.num_parts=2 'prepare.part_index=range(2)'", True),
        ("dvc exp run -S 'train.optim.lr=1e-3,3e-4'", False),
        ("dvc exp run -S train.optim.no_such_key=1", True),
        ("make run", False),
        ("make no-such-target", True),
        ("python pipelines/params.py --check", False),
        ("python pipelines/params.py --no-such-flag", True),
    ],
)
def test_the_check_catches_broken_commands(text: str, broken: bool) -> None:
    error = command_error(Shown(README, 1, text))
    assert (error is not None) == broken, error


def test_the_check_reads_github_anchors() -> None:
    assert github_slug("Training recipe: what makes the tiny default follow its captions") == (
        "training-recipe-what-makes-the-tiny-default-follow-its-captions"
    )
    assert github_slug("The `evaluate` stage") == "the-evaluate-stage"
    assert github_slug("glide — GLIDE, trainable") == "glide--glide-trainable"
    assert github_slug("Sampling speed (`benchmarks/sample.py`)") == (
        "sampling-speed-benchmarkssamplepy"
    )


def test_the_check_reads_pages(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## The `glide` command\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#the-glide-command) [bad](other.md#the-glide) [gone](missing.md)\n\n"
        "```bash\n"
        "glide sample --prompt x \\\n"
        "    --out y.png > log.txt   # a comment\n"
        "make run && make no-such-target\n"
        "# ## not a heading\n"
        "```\n\n"
        "Inline: `python pipelines/train.py train=base train.no_such_key=1`.\n",
        encoding="utf-8",
    )
    errors = {s.text: link_error(s) for s in links(page)}
    assert errors["other.md#the-glide-command"] is None
    assert "no heading with anchor #the-glide" in str(errors["other.md#the-glide"])
    assert "missing.md does not exist" in str(errors["missing.md"])
    shown = commands(page)
    assert [(c.line, c.text) for c in shown] == [
        (6, "glide sample --prompt x --out y.png"),
        (8, "make run"),
        (8, "make no-such-target"),
        (12, "python pipelines/train.py train=base train.no_such_key=1"),
    ]
    assert [command_error(c) is not None for c in shown] == [False, False, True, True]
