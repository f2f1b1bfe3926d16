"""The documentation stays true: docs/configuration.md matches the config dataclasses, every relative link and
repository path in README.md and docs/*.md exists, no machine paths leak in, and the README's commands parse."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
REPO_PATH = re.compile(r"(?<![\w./-])((?:vlfss|configs|eval|prompts|tests|docs|\.ci)/[\w./{}<>*,-]*[\w/}>*])")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|tmp|home|Users)/")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_configuration", REPO / "docs" / "gen_configuration.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters and '-' kept), spaces '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text("utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _page_id(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def test_configuration_md_is_generated_from_the_current_dataclasses():
    current = (REPO / "docs" / "configuration.md").read_text("utf-8")
    if current != _generator().render(REPO):
        pytest.fail("docs/configuration.md is stale: run `python docs/gen_configuration.py`")


def test_generator_reads_fields_defaults_and_comments(tmp_path):
    """Trailing comments, their continuation lines, comments above a field, type aliases and nesting, without
    importing the source."""
    pkg = tmp_path / "vlfss" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "conf.py").write_text(textwrap.dedent('''\
        from dataclasses import dataclass, field
        from typing import Literal

        Kind = Literal["a", "b"]
        import torch_that_is_not_installed  # never imported by the generator


        @dataclass
        class InnerConfig:
            """The inner part.

            More words."""

            size: int = 3  # how big
            # it is, continued

            # the flag below (a blank line ends a continuation)
            flag: bool = False
            names: list[str] = field(default_factory=lambda: ["x", "y"])  # a | <b>


        @dataclass
        class OuterConfig:
            """The outer part."""

            inner: InnerConfig = field(default_factory=InnerConfig)
            kind: Kind = "a"  # which kind
            path: str | None = None  # noqa: E501
            last: int = 0  # the last field
            # continues after it
        # a module comment, not the field's


        @dataclass
        class _PrivateConfig:
            hidden: int = 1


        class NotADataclassConfig:
            x: int = 1
        '''))
    gen = _generator()
    configs = {c.name: c for c in gen.find_configs(tmp_path)}
    assert set(configs) == {"InnerConfig", "OuterConfig"}
    inner = {f.name: f for f in configs["InnerConfig"].fields}
    assert inner["size"].doc == "how big it is, continued" and inner["size"].default == "`3`"
    assert inner["flag"].doc == "the flag below (a blank line ends a continuation)"
    assert inner["flag"].default == "`False`"
    assert inner["names"].default == '`["x", "y"]`'
    outer = {f.name: f for f in configs["OuterConfig"].fields}
    assert outer["inner"].config_type == "InnerConfig" and outer["inner"].doc == "The inner part."
    assert outer["kind"].annotation == 'Literal["a", "b"]' and outer["kind"].doc == "which kind"
    assert outer["path"].doc == ""  # pragmas are not documentation
    assert outer["last"].doc == "the last field continues after it"
    text = gen.render(tmp_path)
    assert "Nested as OuterConfig: `inner.`." in text
    assert '| `names` | `list[str]` | `["x", "y"]` | a \\| &lt;b&gt; |' in text  # pipes and tags are escaped
    assert text.index("## OuterConfig") < text.index("## InnerConfig")  # the top-level config comes first


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_point_to_files_and_headings_that_exist(page):
    text = FENCE.sub("", page.read_text("utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or REPO not in (dest, *dest.parents):
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{_page_id(page)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_repository_paths_named_in_the_docs_exist(page):
    """Paths into the repository (in text, code spans and commands) name real files; placeholders
    ({fold}, <name>, globs, runs/ outputs) are not paths."""
    missing = []
    for path in REPO_PATH.findall(page.read_text("utf-8")):
        if re.search(r"[{<*]", path) or (REPO / path).exists():
            continue
        missing.append(path)
    assert not missing, f"{_page_id(page)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_machine_paths(page):
    found = MACHINE_PATH.findall(page.read_text("utf-8"))
    assert not found, f"{_page_id(page)} names machine paths {found}; use paths relative to the repository"


def _commands(page: Path) -> list[str]:
    """The `vlfss ...` command lines in a page's fenced shell blocks (continuation lines joined)."""
    out, shell, lines = [], None, []
    for line in page.read_text("utf-8").splitlines():
        if line.startswith("```"):
            if shell is None:  # an opening fence
                shell, lines = line[3:].strip() in ("bash", "sh", ""), []
                continue
            if shell:
                out += [c.strip() for c in "\n".join(lines).replace("\\\n", " ").splitlines()]
            shell = None
        elif shell is not None:
            lines.append(line)
    return [c for c in out if c.startswith("vlfss ")]


def test_readme_commands_parse_and_every_subcommand_is_documented():
    from vlfss.cli import COMMANDS, build_parser

    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    readme = REPO / "README.md"
    commands = [c for p in PAGES for c in _commands(p)]
    assert commands, "no vlfss commands found in the docs"
    for line in commands:
        argv = shlex.split(line, comments=True)[1:]
        assert argv[0] in names, f"unknown subcommand in {line!r}"
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit:
            pytest.fail(f"the CLI rejects a documented command: {line}")
        assert not extra, f"unrecognized arguments {extra} in a documented command: {line}"
    documented = {shlex.split(c)[1] for c in _commands(readme)}
    assert documented >= names, f"subcommands missing from the README's examples: {sorted(names - documented)}"
    assert len(COMMANDS) == len(names)


def test_readme_fresh_machine_commands_are_the_ones_ci_runs():
    readme = (REPO / "README.md").read_text("utf-8")
    ci = (REPO / ".ci" / "run").read_text("utf-8")
    assert 'pip install -e ".[dev]"' in readme and "vlfss demo" in readme
    assert "\npython -m pytest -q\n" in readme
    assert 'pip install -q -e ".[dev]"' in ci and "vlfss demo" in ci and "python -m pytest -q" in ci
