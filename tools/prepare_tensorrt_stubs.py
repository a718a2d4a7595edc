#!/usr/bin/env python3
"""Copy the installed ``tensorrt-stubs`` into a folder mypy can use (``MYPYPATH``), repairing its defects.

``pip install --no-deps tensorrt-stubs`` puts ``tensorrt/__init__.pyi`` and ``tensorrt_bindings/*.pyi``
straight into site-packages without a ``py.typed`` marker, and the generated stubs do not parse: parameters
are named with Python keywords (``in:``), a parameter without a default follows ones with defaults, a
module-level ``bool: DataType`` shadows the builtin in ~340 annotations, some annotations name things that
do not exist (``capsule``, ``...``, an unimported ``typing_extensions``, the runtime-only ``tensorrt_libs``)
and ``x: T = None`` defaults are implicit Optionals.  This script copies every stub package of the
distribution into OUTPUT, repairs those defects and prints each repair.

    python tools/prepare_tensorrt_stubs.py OUTPUT   # then: MYPYPATH=OUTPUT mypy --strict ...

Standard library only.  Exit status 0 on success, 2 when tensorrt-stubs is not installed, 1 when a
repaired stub still does not parse.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib.metadata
import importlib.util
import keyword
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DISTRIBUTION = "tensorrt-stubs"
BUILTIN_NAMES = frozenset(dir(builtins))
KEYWORD_PARAM = re.compile(r"(?P<pre>[(,]\s*)(?P<kw>" + "|".join(keyword.kwlist) + r")(?P<post>\s*[:=,)])")


@dataclass
class Report:
    repairs: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, what: str, where: str) -> None:
        self.repairs[what] += 1
        self.examples.setdefault(what, where)


def stub_packages(dist: importlib.metadata.Distribution) -> dict[str, list[tuple[Path, Path]]]:
    """Top-level package -> its .pyi files as (path relative to site-packages, absolute path)."""
    out: dict[str, list[tuple[Path, Path]]] = {}
    for f in dist.files or []:
        parts = f.parts
        if len(parts) < 2 or not parts[-1].endswith(".pyi") or parts[0].endswith((".dist-info", ".egg-info")):
            continue
        out.setdefault(parts[0], []).append((Path(*parts), Path(str(dist.locate_file(f)))))
    return out


# -- text-level repairs (the file must parse before the AST-level ones) ------------------------------------


def _split_params(params: str) -> list[str]:
    """Split a one-line parameter list on top-level commas."""
    depth = 0
    cur: list[str] = []
    out: list[str] = []
    for ch in params:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return out


def _fix_default_order(line: str) -> str | None:
    """`def f(a=1, b)`: drop the defaults before the last parameter without one (stricter, never looser)."""
    m = re.match(r"^(?P<head>\s*def \w+\()(?P<params>.*)(?P<tail>\)\s*(->.*)?:\s*)$", line)
    if not m:
        return None
    params = _split_params(m["params"])
    names = [p.strip() for p in params]
    plain = [i for i, p in enumerate(names) if p and "=" not in p and not p.startswith("*")]
    if not plain:
        return None
    last = plain[-1]
    defaulted = [i for i in range(last) if "=" in names[i] and not names[i].startswith("*")]
    if not defaulted or any(n.startswith("*") for n in names[:last]):
        return None
    for i in defaulted:
        head, default = (x.strip() for x in params[i].split("=", 1))
        none_ok = default == "None" and ":" in head and not re.search(r"\b(None|Optional|Any)\b", head)
        params[i] = (" " if params[i].startswith(" ") else "") + head + (" | None" if none_ok else "")
    return m["head"] + ",".join(params) + m["tail"]


def repair_text(text: str, rel: str, report: Report) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("def "):
            continue
        new = KEYWORD_PARAM.sub(lambda m: f"{m['pre']}{m['kw']}_{m['post']}", line)
        if new != line:
            report.add("parameter named with a Python keyword -> name_", f"{rel}:{i + 1}")
            line = new
        try:
            ast.parse(line.strip() + " ...")
        except SyntaxError as e:
            if "default" in str(e):
                fixed = _fix_default_order(line)
                if fixed is not None:
                    report.add("parameter without a default after defaulted ones -> earlier defaults dropped "
                               "(None -> | None)", f"{rel}:{i + 1}")
                    line = fixed
        lines[i] = line
    return "\n".join(lines)


# -- AST-level repairs ---------------------------------------------------------------------------------------


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _module_level_names(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            out.add(node.name)
    return out


def _annotations(tree: ast.Module) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _implicit_optionals(tree: ast.Module) -> Iterator[ast.expr]:
    """Annotations of parameters that default to None but do not admit None."""
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
        pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
        for arg, default in pairs:
            if not (isinstance(default, ast.Constant) and default.value is None) or arg.annotation is None:
                continue
            src = ast.unparse(arg.annotation)
            if not re.search(r"\b(None|Optional|Any)\b", src):
                yield arg.annotation


@dataclass(frozen=True)
class Edit:
    line: int  # 1-based
    start: int  # UTF-8 byte offsets, as ast reports them
    end: int
    text: str


def _apply(text: str, edits: list[Edit]) -> str:
    lines = text.split("\n")
    by_line: dict[int, list[Edit]] = {}
    for e in edits:
        by_line.setdefault(e.line, []).append(e)
    for ln, es in by_line.items():
        raw = lines[ln - 1].encode()
        taken: list[tuple[int, int]] = []
        for e in sorted(es, key=lambda e: (e.start, -e.end)):
            if any(s <= e.start < t for s, t in taken):
                continue  # nested inside an edit already made (e.g. Optional wrap around a renamed name)
            taken.append((e.start, e.end))
        keep = [e for e in es if (e.start, e.end) in taken]
        for e in sorted(keep, key=lambda e: e.start, reverse=True):
            raw = raw[: e.start] + e.text.encode() + raw[e.end:]
        lines[ln - 1] = raw.decode()
    return "\n".join(lines)


def repair_ast(text: str, rel: str, package_names: set[str], report: Report) -> str:
    tree = ast.parse(text, filename=rel)
    defined = _defined_names(tree)
    shadowed = {n for n in _module_level_names(tree) if n in BUILTIN_NAMES}
    edits: list[Edit] = []
    need: set[str] = set()
    optional_spans = {(a.lineno, a.col_offset, a.end_col_offset) for a in _implicit_optionals(tree)}

    for ann in _annotations(tree):
        for n in ast.walk(ann):
            if not isinstance(n, ast.expr) or n.end_lineno != n.lineno or n.end_col_offset is None:
                continue
            where = f"{rel}:{n.lineno}"
            if isinstance(n, ast.Constant) and n.value is Ellipsis:
                edits.append(Edit(n.lineno, n.col_offset, n.end_col_offset, "typing.Any"))
                need.add("typing")
                report.add("`...` used as a type -> typing.Any", where)
            elif isinstance(n, ast.Name) and n.id in shadowed:
                edits.append(Edit(n.lineno, n.col_offset, n.end_col_offset, f"builtins.{n.id}"))
                need.add("builtins")
                report.add(f"builtin `{n.id}` shadowed by a module-level name -> builtins.{n.id}", where)
            elif isinstance(n, ast.Name) and n.id not in defined and n.id not in BUILTIN_NAMES:
                if importlib.util.find_spec(n.id) is not None and any(
                        isinstance(p, ast.Attribute) and p.value is n for p in ast.walk(ann)):
                    need.add(n.id)
                    report.add(f"module `{n.id}` used but not imported -> import added", where)
                else:
                    edits.append(Edit(n.lineno, n.col_offset, n.end_col_offset, "typing.Any"))
                    need.add("typing")
                    report.add(f"undefined name `{n.id}` -> typing.Any", where)
    for ln, start, end in optional_spans:
        assert end is not None
        line = text.split("\n")[ln - 1].encode()
        inner = line[start:end].decode()
        # re-apply the inner edits to the wrapped text so they are not lost
        inner_edits = [Edit(1, e.start - start, e.end - start, e.text) for e in edits
                       if e.line == ln and start <= e.start and e.end <= end]
        edits.append(Edit(ln, start, end, _apply(inner, inner_edits) + " | None"))
        report.add("implicit Optional `x: T = None` -> `x: T | None = None`", f"{rel}:{ln}")

    # imports of modules that exist neither in the stubs nor in this environment (tensorrt_libs)
    for node in tree.body:
        if isinstance(node, ast.Import) and len(node.names) == 1 and node.end_lineno == node.lineno:
            mod = node.names[0].name
            top = mod.split(".")[0]
            if top in package_names or importlib.util.find_spec(top) is not None:
                continue
            alias = node.names[0].asname or top
            raw_line = text.split("\n")[node.lineno - 1]
            edits.append(Edit(node.lineno, 0, len(raw_line.encode()), f"{alias}: types.ModuleType"))
            need.add("types")
            report.add(f"import of runtime-only module `{mod}` -> `{alias}: types.ModuleType`",
                       f"{rel}:{node.lineno}")
    text = _apply(text, edits)
    imported = {(a.asname or a.name) for node in tree.body if isinstance(node, ast.Import) for a in node.names}
    missing = sorted(need - imported)
    if missing:
        lines = text.split("\n")
        at = next((i + 1 for i, ln_ in enumerate(lines) if ln_.startswith("from __future__")), 0)
        lines[at:at] = [f"import {m}" for m in missing]
        text = "\n".join(lines)
    return text


def prepare(out: Path) -> Report:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        print(f"{DISTRIBUTION} is not installed (pip install --no-deps {DISTRIBUTION})", file=sys.stderr)
        raise SystemExit(2) from None
    packages = stub_packages(dist)
    if not packages:
        raise SystemExit(f"{DISTRIBUTION} {dist.version} lists no .pyi files")
    report = Report()
    print(f"{DISTRIBUTION} {dist.version}: stub packages {', '.join(sorted(packages))} -> {out}")
    out.mkdir(parents=True, exist_ok=True)
    failed = False
    for pkg, files in sorted(packages.items()):
        root = out / pkg
        if root.exists():
            shutil.rmtree(root)
        for rel, src in files:
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = repair_text(src.read_text(encoding="utf-8"), str(rel), report)
            try:
                text = repair_ast(text, str(rel), set(packages), report)
                ast.parse(text, filename=str(rel))
            except SyntaxError as e:
                print(f"error: {rel} still does not parse after repair: {e}", file=sys.stderr)
                failed = True
            dst.write_text(text, encoding="utf-8")
        (root / "py.typed").write_text("", encoding="utf-8")  # also usable as a site-packages-style folder
        report.add("py.typed marker added", str(root / "py.typed"))
    for what, n in sorted(report.repairs.items()):
        print(f"  repaired {n:4d} x {what}  (e.g. {report.examples[what]})")
    if failed:
        raise SystemExit(1)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    ap.add_argument("output", type=Path, help="folder to write the repaired stub packages to (use as MYPYPATH)")
    args = ap.parse_args(argv)
    prepare(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
