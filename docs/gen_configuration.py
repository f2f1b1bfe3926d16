"""Generate docs/configuration.md from the config dataclasses' field comments.

Every ``@dataclass`` named ``*Config`` under ``vlfss/`` is found by parsing the source (``ast`` for the fields and
their defaults, ``tokenize`` for the comments), so the script imports nothing from vlfss (no torch) and keeps
working when a dataclass moves to another module. A field's text is its trailing comment plus the comment-only
lines that continue it (up to a blank line or the next field); a field without one takes the comment lines just
above it.

    python docs/gen_configuration.py            # rewrite docs/configuration.md
    python docs/gen_configuration.py --check    # exit 1 when docs/configuration.md is stale
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "configuration.md"

# How a user sets each top-level config (keyed by class name, so a move between modules changes nothing here).
USAGE = {
    "SegmenterConfig": "`build_segmenter(model, **fields)` in Python; `--set key=value` (plus the named flags "
                       "`--model`, `--pretrained`, `--mode`, `--head`, `--variant`, `--templates`, `--input-size`, "
                       "`--device`) on `vlfss segment` and `vlfss eval`; the `segmenter:` section of a training "
                       "config.",
    "TrainConfig": "`vlfss train --config FILE [key=value ...]` (YAML; `configs/base.yaml` and its deltas), or "
                   "`vlfss.fit(cfg)` in Python.",
    "PromptTuneConfig": "`vlfss tune-prompts` flags (`--n-ctx`, `--steps`, `--lr`, `--init`, `--anchor-weight`, "
                        "`--no-residual`, `--seed`), or `vlfss.tune_prompts(..., cfg=...)` in Python.",
    "PretrainConfig": "`vlfss pretrain-clip --config FILE [key=value ...]` (`configs/synthetic/tiny_clip*.yaml`).",
    "RobustConfig": "`vlfss robust-clip --config FILE [key=value ...]` (`configs/synthetic/tiny_clip_robust.yaml`).",
    "SyntheticConfig": "Python: `generate_scene(seed, index, SyntheticConfig(...))`; the synthetic benchmark uses the "
                       "defaults but for `image_size` (`--bench-opt image_size=N`).",
}
ROOT_ORDER = list(USAGE)
_PRAGMAS = ("noqa", "type:", "pragma")


@dataclass
class Field:
    name: str
    annotation: str
    default: str  # markdown
    doc: str
    config_type: str | None  # the *Config class this field holds, if any


@dataclass
class ConfigClass:
    name: str
    path: str  # repository-relative source file
    line: int
    doc: str
    fields: list[Field] = field(default_factory=list)


def _comments(source: str) -> tuple[dict[int, str], dict[int, int]]:
    """Comment text by line number, and the lines that hold nothing but a comment (with its column)."""
    text, alone = {}, {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            body = tok.string.lstrip("#").strip()
            if not body.startswith(_PRAGMAS):
                text[tok.start[0]] = body
                if not tok.line[: tok.start[1]].strip():
                    alone[tok.start[0]] = tok.start[1]
    return text, alone


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Name) and target.id == "dataclass":
            return True
        if isinstance(target, ast.Attribute) and target.attr == "dataclass":
            return True
    return False


def _field_doc(stmt: ast.AnnAssign, next_line: int, comments: dict[int, str], alone: dict[int, int],
               used: set[int]) -> str:
    """Trailing comment + the comment-only lines that continue it (indented as the field, before the next
    statement); else the comment lines just above."""
    trailing = [n for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments and n not in alone]
    parts = []
    if trailing:
        parts = [comments[n] for n in trailing]
        n = stmt.end_lineno + 1
        while n < next_line and alone.get(n, -1) >= stmt.col_offset:
            parts.append(comments[n])
            used.add(n)
            n += 1
    else:
        n = stmt.lineno - 1
        above = []
        while alone.get(n, -1) >= stmt.col_offset and n not in used:
            above.append(comments[n])
            n -= 1
        parts = above[::-1]
    return " ".join(parts)


def _default(value: ast.expr | None, source: str, configs: set[str]) -> tuple[str, str | None]:
    """Markdown for a field's default, and the *Config class it builds (default_factory=SomeConfig)."""
    if value is None:
        return "(required)", None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        for kw in value.keywords:
            if kw.arg == "default_factory":
                f = kw.value
                if isinstance(f, ast.Name) and f.id in configs:
                    return f"`{f.id}()`", f.id
                if isinstance(f, ast.Name) and f.id in ("list", "dict", "set", "tuple"):
                    return {"list": "`[]`", "dict": "`{}`", "set": "`set()`", "tuple": "`()`"}[f.id], None
                if isinstance(f, ast.Lambda):
                    return f"`{ast.get_source_segment(source, f.body)}`", None
                return f"`{ast.get_source_segment(source, f)}()`", None
            if kw.arg == "default":
                return f"`{ast.get_source_segment(source, kw.value)}`", None
        return "(required)", None
    return f"`{ast.get_source_segment(source, value)}`", None


def _aliases(tree: ast.Module, source: str) -> dict[str, str]:
    """Module-level type aliases (``Mode = Literal[...]``), so a field's type shows what it accepts."""
    out = {}
    for n in tree.body:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            if isinstance(n.value, ast.Subscript):
                out[n.targets[0].id] = ast.get_source_segment(source, n.value) or ""
    return out


def _classes_in(path: Path) -> list[tuple[ast.ClassDef, str, dict[int, str], dict[int, int], dict[str, str]]]:
    source = path.read_text("utf-8")
    tree = ast.parse(source)
    comments, alone = _comments(source)
    aliases = _aliases(tree, source)
    return [(n, source, comments, alone, aliases) for n in tree.body
            if isinstance(n, ast.ClassDef) and n.name.endswith("Config") and not n.name.startswith("_")
            and _is_dataclass(n)]


def find_configs(root: Path = REPO) -> list[ConfigClass]:
    """Every public ``@dataclass`` named ``*Config`` under ``root/vlfss``, in source order."""
    found = []
    for path in sorted((root / "vlfss").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        found += [(node, rel, *rest) for node, *rest in _classes_in(path)]
    names = {node.name for node, *_ in found}
    out = []
    for node, rel, source, comments, alone, aliases in found:
        cls = ConfigClass(node.name, rel, node.lineno, (ast.get_docstring(node) or "").strip())
        stmts = [s for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        used: set[int] = set()
        for s in stmts:
            later = [b.lineno for b in node.body if b.lineno > s.end_lineno]  # the next statement of the class
            next_line = min(later) if later else sys.maxsize
            default, sub = _default(s.value, source, names)
            ann = ast.get_source_segment(source, s.annotation) or ""
            if sub is None and ann in names:
                sub = ann
            ann = aliases.get(ann, ann)
            cls.fields.append(Field(s.target.id, ann, default, _field_doc(s, next_line, comments, alone, used), sub))
        out.append(cls)
    by_name = {c.name: c for c in out}
    for c in out:  # a nested config's field without a comment: the nested class's one-line summary
        for f in c.fields:
            if not f.doc and f.config_type:
                f.doc = by_name[f.config_type].doc.split("\n")[0]
    return out


def _paths(configs: list[ConfigClass]) -> dict[str, list[str]]:
    """Each nested config's key prefixes from the top-level ones (``TrainConfig: segmenter.training_free.``)."""
    by_name = {c.name: c for c in configs}
    out: dict[str, list[str]] = {c.name: [] for c in configs}

    def walk(root: str, name: str, prefix: str, seen: tuple[str, ...]) -> None:
        for f in by_name[name].fields:
            if f.config_type and f.config_type not in seen:
                key = f"{prefix}{f.name}."
                out[f.config_type].append(f"{root}: `{key}`")
                walk(root, f.config_type, key, seen + (f.config_type,))

    for r in _roots(configs):
        walk(r.name, r.name, "", (r.name,))
    return out


def _roots(configs: list[ConfigClass]) -> list[ConfigClass]:
    """The configs a user sets directly: those in USAGE (in its order), then any that no other config holds."""
    nested = {f.config_type for c in configs for f in c.fields if f.config_type}
    roots = [c for c in configs if c.name in USAGE or c.name not in nested]
    return sorted(roots, key=lambda c: (ROOT_ORDER.index(c.name) if c.name in ROOT_ORDER else len(ROOT_ORDER)))


def _order(configs: list[ConfigClass]) -> list[ConfigClass]:
    """Top-level configs first (users' order), each followed by the configs nested in it, depth first."""
    by_name = {c.name: c for c in configs}
    done: list[str] = []

    def visit(c: ConfigClass) -> None:
        if c.name in done:
            return
        done.append(c.name)
        for f in c.fields:
            if f.config_type:
                visit(by_name[f.config_type])

    for r in _roots(configs):
        visit(r)
    for c in configs:  # anything left (a cycle) keeps its source order
        visit(c)
    return [by_name[n] for n in done]


def _cell(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


def _prose(text: str) -> str:
    """A comment as markdown text: ``<i>`` outside code spans would be read as HTML, so it is escaped."""
    parts = text.replace("``", "`").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def render(root: Path = REPO) -> str:
    """The whole docs/configuration.md."""
    configs = _order(find_configs(root))
    paths = _paths(configs)
    lines = [
        "<!-- generated by docs/gen_configuration.py from the dataclasses' field comments: do not edit by hand -->",
        "",
        "# Configuration keys",
        "",
        "Every setting is a field of a typed dataclass with one default, stated once, in the code. YAML files and "
        "`key=value` overrides are checked strictly: an unknown key, a value of the wrong type or a NaN is an error "
        "that names the key. Nested sections are written with dots on the command line "
        "(`training_free.shrinkage=0.8`, `data.fold=1`) and as mappings in YAML. Paths in a YAML file (keys ending "
        "in `_path`, `_dir`, `_root`, `_file`) resolve relative to that file; a file may start from another with "
        "`base: other.yaml`.",
        "",
        "A default of `None` means \"decided elsewhere\", and the field's text says where (usually: the model's own "
        "default, from its registry entry).",
        "",
        "| config | what it is | where it is set |",
        "| --- | --- | --- |",
    ]
    for c in configs:
        first = c.doc.splitlines()[0] if c.doc else ""
        where = USAGE.get(c.name) or "; ".join(paths[c.name]) or "Python only"
        lines.append(f"| [`{c.name}`](#{c.name.lower()}) | {_cell(_prose(first))} | {_cell(where)} |")
    for c in configs:
        summary = _prose(" ".join(c.doc.split()))
        lines += ["", f"## {c.name}", "", f"[`{c.path}`](../{c.path}). {summary}", ""]
        if paths[c.name]:
            lines += ["Nested as " + ", ".join(paths[c.name]) + ".", ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for f in c.fields:
            ann = f"[`{f.annotation}`](#{f.config_type.lower()})" if f.config_type and f.annotation == f.config_type \
                else f"`{f.annotation}`"
            lines.append(f"| `{f.name}` | {_cell(ann)} | {_cell(f.default)} | {_cell(_prose(f.doc))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        stale = not OUTPUT.is_file() or OUTPUT.read_text("utf-8") != text
        if stale:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run `python docs/gen_configuration.py`", file=sys.stderr)
        return int(stale)
    OUTPUT.write_text(text, "utf-8")
    missing = [f"{c.name}.{f.name}" for c in find_configs() for f in c.fields if not f.doc]
    if missing:
        print(f"fields without a comment: {', '.join(missing)}", file=sys.stderr)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
