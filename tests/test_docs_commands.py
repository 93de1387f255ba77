"""Every `lit-swift ...` command that README.md and docs/**/*.md show works as written (issue 13, item 4).

Commands in fenced code blocks are parsed with `main(args, parse_only=True)` (the same parser a real run
uses, nothing is built); the cheap ones (`--help`, `--print_config`, `data preview`) run for real. A
synopsis in inline code (`lit-swift data preview --model M --dataset FILE`), in the docs or in
`lit-swift --help`, must name a real command,
and each `--flag` it shows must be in that command's `--help`. New pages and commands are picked up
automatically.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lit_swift import cli
from lit_swift.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`(lit-swift [^`]+)`")
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>&1"}
CHEAP = ("--help", "--print_config")


def _args_after_lit_swift(tokens: list[str]) -> list[list[str]]:
    """The argument lists of every lit-swift call in one shell command line (also `-m lit_swift`, `--command "..."`)."""
    found = []
    for i, token in enumerate(tokens):
        if token == "lit-swift" or (token == "lit_swift" and i and tokens[i - 1] == "-m"):
            rest = tokens[i + 1 :]
            cut = next((j for j, t in enumerate(rest) if t in SHELL_STOP), len(rest))
            found.append(rest[:cut])
        elif token.startswith("lit-swift "):
            found += _args_after_lit_swift(shlex.split(token))
    return found


def fenced_commands() -> list[tuple[str, list[str]]]:
    """(`page:line`, args) of each lit-swift command in a fenced code block; `\\` continuations joined."""
    out = []
    for page in PAGES:
        inside, pending, start = False, "", 0
        for line_no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if FENCE.match(line):
                inside, pending = not inside, ""
                continue
            if not inside:
                continue
            start = start if pending else line_no
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text, pending = pending + line, ""
            for args in _args_after_lit_swift(shlex.split(text, comments=True)):
                out.append((f"{page.relative_to(ROOT)}:{start}", args))
    return out


def inline_synopses() -> list[tuple[str, str]]:
    """(`page:line`, text) of each `lit-swift ...` inline code span outside fenced blocks."""
    out = []
    for page in PAGES:
        inside = False
        for line_no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if FENCE.match(line):
                inside = not inside
            elif not inside:
                out += [(f"{page.relative_to(ROOT)}:{line_no}", m.group(1)) for m in INLINE.finditer(line)]
    return out


FENCED = fenced_commands()
SYNOPSES = inline_synopses() + [
    (f"lit-swift --help: {name}", m.group(1))
    for name, text in cli.TOOL_COMMANDS.items()
    for m in INLINE.finditer(text)
]


def test_the_docs_show_commands():
    shown = {args[0] for _, args in FENCED if args}
    assert {"fit", "export", "infer", "data"} <= shown
    assert any(text.startswith("lit-swift data preview --model") for _, text in SYNOPSES)


def test_every_tool_command_has_a_parse_only_path():
    assert set(cli.TOOL_COMMANDS) == set(cli.TOOL_TARGETS)


def _run(where: str, args: list[str], capsys, parse_only: bool):
    try:
        return main(list(args), parse_only=parse_only)
    except SystemExit as exit:  # --help and --print_config exit 0 after printing
        err = capsys.readouterr().err
        assert exit.code in (0, None), f"{where}: `lit-swift {shlex.join(args)}` failed: {err}"


def _cheap(args: list[str]) -> bool:
    return not args or any(a in CHEAP for a in args) or args[:2] == ["data", "preview"]


TRAINER = [(w, a) for w, a in FENCED if a and a[0] in cli.TRAINER_COMMANDS and not _cheap(a)]
OTHERS = [(w, a) for w, a in FENCED if (w, a) not in TRAINER]


def test_documented_trainer_commands_parse(monkeypatch, capsys):
    """One LightningCLI parser (as `main(parse_only=True)` builds it) parses every fit-like command."""
    monkeypatch.chdir(ROOT)
    parser = _run(*TRAINER[0], capsys, parse_only=True).parser
    failed = []
    for where, args in TRAINER[1:]:
        try:
            parser.parse_args(list(args))
        except Exception as err:  # jsonargparse's ArgumentError: collect them all, then fail once
            failed.append(f"{where}: `lit-swift {shlex.join(args)}`: {cli.one_line(err, args)}")
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize(("where", "args"), OTHERS, ids=[w for w, _ in OTHERS])
def test_documented_command_parses_or_runs(where, args, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    _run(where, args, capsys, parse_only=not _cheap(args))


HELP: dict[tuple[str, ...], str] = {}


def _help(command: list[str], capsys) -> str:
    if tuple(command) not in HELP:
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        HELP[tuple(command)] = capsys.readouterr().out
    return HELP[tuple(command)]


@pytest.mark.parametrize(("where", "text"), SYNOPSES, ids=[w for w, _ in SYNOPSES])
def test_documented_synopsis_names_real_options(where, text, capsys):
    tokens = text.replace("\\|", "|").replace("[", " ").replace("]", " ").split()[1:]
    words = tokens[: next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))]
    if not words or words[0].isupper():  # `lit-swift COMMAND --help`: a placeholder, not a command
        return
    flags = [t.split("=")[0] for t in tokens if t.startswith("--")]
    known = set(cli.TRAINER_COMMANDS) | set(cli.TOOL_COMMANDS)
    for name in words[0].split("|"):
        assert name in known, f"{where}: `{text}` names no lit-swift command"
        nested = isinstance(cli.TOOL_TARGETS.get(name), dict)
        command = [name, *words[1:2]] if nested else [name]
        usage = _help(command, capsys)
        for flag in flags:
            top = flag.split(".")[0]
            ok = flag in usage or (
                name in cli.TRAINER_COMMANDS and top in ("--model", "--data") and top in usage
            )
            assert ok, f"{where}: `{text}`: `lit-swift {' '.join(command)}` has no option {flag}"
