"""The README's commands run as written (issue 12): every command in its code blocks is extracted; the options
it uses exist; the pytest commands whose files are in the repository collect with plain ``pytest`` and with
``python -m pytest``; the fast ones run for real, and a repro line that a failing one prints reruns with both.

Commands that need files an earlier step makes (``mine/...``, ``/tmp/calib/...``, a user's ``encoder.onnx``) or
that are templates (``[--x]``, ``CONTRACT``) are checked for their option names only; the test names them.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamparity.cli.main import COMMAND_MODULES
from streamparity.pytest_plugin.options import PATH_OPTIONS
from tests.conftest import ROOT

PROGRAMS = ("pytest", "python -m pytest", "streamparity")
SUBCOMMANDS = {m.rsplit(".cmd_", 1)[1].replace("_", "-") for m in COMMAND_MODULES}
FAST_MARKS = ("stability", "closed_loop or stability")
"""``-m`` selections that run in a few seconds on the embedded model (one closed loop, no benchmark)."""


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    argv: tuple[str, ...]

    @property
    def program(self) -> str:
        return "python -m pytest" if self.argv[:3] == ("python", "-m", "pytest") else self.argv[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self.argv[3:] if self.program == "python -m pytest" else self.argv[1:]

    def options(self) -> list[str]:
        return [a.split("=", 1)[0] for a in self.args if a.startswith("--")]

    def is_template(self) -> bool:
        return any("[" in a or "|" in a or re.fullmatch(r"[A-Z_]{4,}", a.split("=", 1)[-1]) for a in self.args)

    def missing_files(self) -> list[str]:
        """Paths the command names that the repository does not hold."""
        paths = [a.split("=", 1)[1] for a in self.args if a.split("=", 1)[0] in PATH_OPTIONS and "=" in a]
        paths += [a for a in self.args if not a.startswith("-") and ("/" in a or re.search(r"\.(json|onnx|jsonl|"
                                                                                             r"plan|py)$", a))]
        for a in self.args:
            if a.startswith("--runtime="):  # NAME:PRECISION=COMMAND: the command's own paths
                paths += [p.split("=", 1)[-1] for p in shlex.split(a.split("=", 2)[-1]) if "/" in p or "." in p]
            elif a.startswith("--recorded="):  # NAME:PRECISION=DIR
                paths.append(a.split("=", 2)[-1])
        return [p for p in paths if not (ROOT / p.split("::")[0]).exists()]


def readme_commands() -> list[Command]:
    """Every command in the README's fenced blocks: ``$ `` prompts stripped, ``\\`` continuations joined,
    comments dropped; printed output (``streamparity: error: ...``) is not a command."""
    out: list[Command] = []
    inside, pending, start = False, "", 0
    for no, raw in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if raw.startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        text = raw.strip()
        if pending:
            text, pending = pending + " " + text, ""
        else:
            start = no
            text = text[2:] if text.startswith("$ ") else text
        if text.endswith("\\"):
            pending = text[:-1].strip()
            continue
        if not text.startswith(PROGRAMS) or re.match(r"\S+:", text):
            continue
        try:
            argv = tuple(shlex.split(text, comments=True))
        except ValueError:
            continue
        if argv and (argv[0] in ("pytest", "streamparity") or argv[:3] == ("python", "-m", "pytest")) \
                and not (argv[0] == "streamparity" and (len(argv) < 2 or argv[1] not in SUBCOMMANDS)):
            out.append(Command(start, text, argv))
    return out


COMMANDS = readme_commands()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _plain_pytest() -> str:
    exe = Path(sys.executable).with_name("pytest")
    found = str(exe) if exe.exists() else shutil.which("pytest")
    if found is None:
        pytest.skip("no pytest executable next to this interpreter")
    return found


def _run(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


@functools.cache
def _help(program: str, sub: str = "") -> str:
    """The program's --help: pytest's from a subprocess (every plugin it loads), a subcommand's from its parser."""
    if program == "streamparity":
        import argparse

        from streamparity.cli.main import build_parser

        action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        return str(action.choices[sub].format_help())
    r = _run([_plain_pytest(), "--help"])
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    return r.stdout


def _argv(c: Command, form: str, tmp: Path) -> list[str]:
    head = [_plain_pytest()] if form == "pytest" else [sys.executable, "-m", "pytest"]
    args = list(c.args)
    if not any(a.startswith("--report-dir") for a in args):
        args.append(f"--report-dir={tmp}")  # the README's default (reports/) belongs to the run of this suite
    return head + args


def test_the_readme_has_commands_to_check():
    programs = {c.program for c in COMMANDS}
    assert len(COMMANDS) >= 20 and {"pytest", "streamparity"} <= programs, [c.text for c in COMMANDS]


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"line{c.line}" for c in COMMANDS])
def test_every_option_a_readme_command_uses_exists(cmd: Command):
    """Option names checked against the program's own --help (pytest with every plugin this suite loads)."""
    sub = cmd.args[0] if cmd.program == "streamparity" else ""
    text = _help("streamparity" if sub else "pytest", sub)
    unknown = [o for o in cmd.options() if not re.search(rf"(^|[\s,]){re.escape(o)}([\s=,\[]|$)", text, re.M)]
    assert not unknown, f"README line {cmd.line}: {cmd.text}\n  unknown option(s): {unknown}"
    spaced = [f"{a} {b}" for a, b in zip(cmd.args, cmd.args[1:]) if a in PATH_OPTIONS and cmd.program != "streamparity"]
    assert not spaced, f"README line {cmd.line}: path options are written with '=': {spaced}"


RUNNABLE = [c for c in COMMANDS if c.program != "streamparity" and not c.is_template() and not c.missing_files()]


def test_enough_readme_commands_run_here():
    assert len(RUNNABLE) >= 4, [c.text for c in RUNNABLE]


def _forms(c: Command) -> list[str]:
    """Plain pytest for every command; python -m pytest too where the two can differ: python -m puts the
    working directory on sys.path, which a ``-p module`` plugin or a test path may depend on."""
    plugin = any(a == "-p" and not b.startswith("no:") for a, b in zip(c.args, c.args[1:]))
    paths = any(not a.startswith("-") and "/" in a for a in c.args)
    return ["pytest", "python -m pytest"] if plugin or paths else ["pytest"]


COLLECT = [(c, form) for c in RUNNABLE for form in _forms(c)]


@pytest.mark.parametrize(("cmd", "form"), COLLECT, ids=[f"line{c.line}-{f.replace(' ', '')}" for c, f in COLLECT])
def test_runnable_readme_pytest_commands_collect(cmd: Command, form: str, tmp_path: Path):
    r = _run([*_argv(cmd, form, tmp_path), "--collect-only", "-q"])
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out and "INTERNALERROR" not in out, \
        f"README line {cmd.line} as `{form}`: {cmd.text}\n{out[-2500:]}"


FAST = [c for c in RUNNABLE if any(a in FAST_MARKS for a in c.args) and "benchmark" not in c.args]


@pytest.mark.parametrize("cmd", FAST, ids=[f"line{c.line}" for c in FAST])
def test_fast_readme_commands_run_and_their_repro_lines_rerun(cmd: Command, tmp_path: Path):
    """Run as written with plain pytest: a verdict (0 or 1), never a usage error or a traceback; where a test
    fails, the first repro line it printed reruns that test with plain pytest and with python -m pytest."""
    r = _run(_argv(cmd, "pytest", tmp_path / "run"))
    out = r.stdout + r.stderr
    assert r.returncode in (0, 1) and "Traceback" not in out and "INTERNALERROR" not in out, \
        f"README line {cmd.line}: {cmd.text}\n{out[-2500:]}"
    repro = next((ln.split("repro: ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("repro: pytest ")), None)
    if r.returncode == 0:
        assert repro is None
        return
    assert repro is not None, f"README line {cmd.line} failed without a repro line:\n{out[-2500:]}"
    argv = shlex.split(repro)
    for head in ([_plain_pytest()], [sys.executable, "-m", "pytest"]):
        again = _run([*head, *argv[1:]])
        text = again.stdout + again.stderr
        assert again.returncode == 1 and "1 failed" in text and "Traceback" not in text, \
            f"repro line of README line {cmd.line} as {head[-1]}: {repro}\n{text[-2500:]}"
