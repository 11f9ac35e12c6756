"""The README's commands, as written, still work (issue 17: the README must not drift again).

Guarantees, for every fenced ```bash block of README.md (English and Japanese parts):

- every command that invokes so8t (`so8t ...`, `.venv/bin/so8t ...`, `python -m so8t ...`,
  `accelerate launch -m so8t ...`) parses with the real parser (`so8t.cli.build_parser`) without
  running; a flag or subcommand that does not exist fails naming the README line;
- its `--preset NAME` is a preset and its `--set key=value` keys (and values) are accepted by
  the config the command builds (TrainConfig for train, ServerConfig for serve, chat, approvals
  and audit), through the CLI's own layering; a wrong key names the closest one; the values the
  commands check only when they run are checked too (built-in data specs such as builtin:dev,
  eval's --baselines, an importer's name and its --map keys);
- every file it mentions that ships with the repository (examples/*.yaml, scripts/*.sh,
  bench/*.py, heldout/*.jsonl, ./setup.sh) exists;
- the cheap ones (RUNNABLE below: help, validating the built-in sets, the training dry-run,
  listing importers, reading the approvals queue and the audit log, checking the example policy
  and writing its precedents as cases) run as subprocesses in a
  temporary folder, so nothing in the repository changes, and exit 0.

Placeholders (ID, RUN, my.jsonl, runs/quick) are fine as positional values: only what the
parser and the configs accept is checked, not that a trained run exists. Known drift the README
has not fixed yet is marked xfail(strict=True) in KNOWN_DRIFT, keyed by the command text so a
README rewrite that moves lines does not move the mark.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from so8t.cli import build_parser

from cli_parsers import subcommands

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclasses.dataclass(frozen=True)
class Command:
    line: int  # README line the (continued) command starts on
    text: str  # the command as the README writes it (continuations joined, comment stripped)
    words: tuple[str, ...]  # after quote removal and $VAR expansion
    so8t_argv: tuple[str, ...] | None  # the arguments after the so8t prefix; None: not a so8t command

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


# ---------------------------------------------------------------- extraction


def _bash_blocks(text: str) -> list[list[tuple[int, str]]]:
    """The ```bash blocks as lists of (line number, line)."""
    blocks, current = [], None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if current is None:
            if re.fullmatch(r"```\s*(bash|sh|shell|console)\s*", stripped):
                current = []
        elif stripped.startswith("```"):
            blocks.append(current)
            current = None
        else:
            current.append((n, line))
    return blocks


def _strip_comment(line: str) -> str:
    """Drop a shell comment: a '#' outside quotes at the start of a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Backslash-continued lines joined, comments stripped, empty lines dropped."""
    out, start, parts = [], None, []
    for n, line in block:
        if start is None:
            start = n
        body = line.rstrip()
        if body.endswith("\\"):
            parts.append(body[:-1])
            continue
        parts.append(body)
        joined = _strip_comment(" ".join(p.strip() for p in parts))
        if joined:
            out.append((start, joined))
        start, parts = None, []
    if parts:
        out.append((start, _strip_comment(" ".join(p.strip() for p in parts))))
    return out


_SEPARATORS = {";", "&&", "||", "|", "&"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _segments(line: str) -> list[list[str]]:
    """Split one logical line into simple commands on ; && || | (outside quotes), as words."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = ""
    segments, current = [], []
    for token in lex:
        if token in _SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    return [s for s in segments if s]


def _so8t_argv(words: list[str]) -> tuple[str, ...] | None:
    while words and _ASSIGNMENT.match(words[0]):  # FOO=bar so8t ...
        words = words[1:]
    if not words:
        return None
    exe = Path(words[0]).name
    if exe == "so8t":
        return tuple(words[1:])
    if re.fullmatch(r"python3?(\.\d+)?", exe) and words[1:3] == ["-m", "so8t"]:
        return tuple(words[3:])
    if exe == "accelerate" and words[1:2] == ["launch"]:
        try:
            i = words.index("-m")
        except ValueError:
            return None
        if words[i + 1 : i + 2] == ["so8t"]:
            return tuple(words[i + 2 :])
    return None


def readme_commands(text: str | None = None) -> list[Command]:
    """Every simple command of every ```bash block, with a block's NAME="..." variables expanded."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands = []
    for block in _bash_blocks(text):
        variables: dict[str, str] = {}
        for line_no, line in _logical_lines(block):
            for words in _segments(line):
                if words[0] == "export":
                    continue
                if all(_ASSIGNMENT.match(w) for w in words):  # C="--set ..." for later lines
                    for w in words:
                        name, _, value = w.partition("=")
                        variables[name] = value
                    commands.append(Command(line_no, line, tuple(words), None))
                    continue
                expanded = []
                for w in words:
                    m = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", w)
                    expanded += shlex.split(variables[m.group(1)]) if m and m.group(1) in variables else [w]
                commands.append(Command(line_no, line, tuple(expanded), _so8t_argv(expanded)))
    return commands


COMMANDS = readme_commands()
SO8T_COMMANDS = [c for c in COMMANDS if c.so8t_argv is not None]

# Drift the README has not fixed yet: command text (as in Command.text) -> reason naming the line.
# strict=True: once the README is fixed the command text changes and the mark no longer applies.
KNOWN_DRIFT: dict[str, str] = {}


def _params(commands):
    out = []
    for c in commands:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_DRIFT[c.text])] if c.text in KNOWN_DRIFT else []
        out.append(pytest.param(c, id=f"{c.where}:{' '.join(c.so8t_argv or c.words)[:60]}", marks=marks))
    return out


# ---------------------------------------------------------------- checks


def _exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser with abbreviations off everywhere: the README must spell every flag in full."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _exact(sub)
    return parser


def _parse(c: Command) -> argparse.Namespace:
    """The real parser on the README's argv; a failure names the line and argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return _exact(build_parser()).parse_args(list(c.so8t_argv))
    except SystemExit as exc:
        if exc.code == 0:  # --help / --version
            return argparse.Namespace(command=None)
        pytest.fail(f"{c.where}: `{c.text}` does not parse: {err.getvalue().strip().splitlines()[-1]}")


def _closest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (available: {', '.join(names)})"


def _check_config(c: Command, args: argparse.Namespace) -> None:
    """--preset names a preset; --set keys and values are what the command's config accepts."""
    from so8t import cli
    from so8t.config import ConfigError, ServerConfig, TrainConfig, check_keys, parse_overrides
    from so8t.train.presets import PRESETS

    preset = getattr(args, "preset", None)
    if preset is not None and preset not in PRESETS:
        pytest.fail(f"{c.where}: `{c.text}`: unknown preset {preset!r}{_closest(preset, PRESETS)}")
    _check_values(c, args)
    schema = {
        "train": TrainConfig,
        "serve": ServerConfig,
        "chat": ServerConfig,
        "approvals": ServerConfig,
        "audit": ServerConfig,
        "autonomy": ServerConfig,
    }.get(args.command)
    if schema is None or (schema is TrainConfig and args.resume):
        return
    try:
        check_keys(schema, parse_overrides(getattr(args, "set", None) or []), f"--set ({schema.__name__})")
    except ConfigError as exc:
        pytest.fail(f"{c.where}: `{c.text}`: {exc}")
    # The whole layering as the command does it (types and ranges too); a --config that is a
    # placeholder (my.yaml) is left out, one that ships (examples/server.yaml) is read.
    if getattr(args, "config", None) and not (ROOT / args.config).is_file():
        args.config = None
    elif getattr(args, "config", None):
        args.config = str(ROOT / args.config)
    build = cli.train_config_from_args if schema is TrainConfig else cli.server_config_from_args
    try:
        result = build(args)
    except ConfigError as exc:
        pytest.fail(f"{c.where}: `{c.text}`: {exc}")
    assert isinstance(result[0] if isinstance(result, tuple) else result, schema)


def _check_values(c: Command, args: argparse.Namespace) -> None:
    """What the commands check only when they run: built-in data specs (builtin:dev), eval's
    --baselines names, an importer's name and its --map keys."""
    from so8t import cli
    from so8t.data.builtin import parse_builtin_spec

    for spec in [*(getattr(args, "data", None) or []), *(getattr(args, "files", None) or [])]:
        try:
            parse_builtin_spec(spec)
        except ValueError as exc:
            pytest.fail(f"{c.where}: `{c.text}`: {exc}")
    if args.command == "eval" and args.baselines:
        from so8t.eval.report import BASELINES

        for name in args.baselines.split(","):
            if name.strip() not in BASELINES:
                pytest.fail(f"{c.where}: `{c.text}`: unknown baseline {name!r}{_closest(name.strip(), BASELINES)}")
    if args.command == "data" and args.sub == "import" and args.name:
        from so8t.data.importers import IMPORTERS, resolve_mapping

        if args.name not in IMPORTERS:
            pytest.fail(f"{c.where}: `{c.text}`: unknown importer {args.name!r}{_closest(args.name, IMPORTERS)}")
        try:
            resolve_mapping(args.name, cli._parse_mapping(args.map))
        except ValueError as exc:
            pytest.fail(f"{c.where}: `{c.text}`: {exc}")


def test_the_readme_has_so8t_commands_in_both_languages():
    lines = README.read_text(encoding="utf-8").splitlines()
    first_japanese = next(n for n, line in enumerate(lines, 1) if re.search(r"[\u3040-\u30ff]", line))
    numbers = [c.line for c in SO8T_COMMANDS]
    assert len(SO8T_COMMANDS) >= 20, [c.text for c in SO8T_COMMANDS]
    assert min(numbers) < first_japanese < max(numbers)


def test_the_extraction_joins_continuations_strips_comments_splits_and_expands():
    text = (
        '```bash\nC="--set lr=3e-4 --set eval_every=15"   # two overrides\n'
        "so8t approvals show ID; .venv/bin/so8t train $C \\\n    --out runs/x  # a comment; not a command\n"
        'scripts/x.sh a && python -m so8t data validate "my file.jsonl"\n'
        "accelerate launch --num_processes 2 -m so8t train --preset rtx3060-3b\n"
        'curl -s "localhost:8000/#frag; so8t"\n```\n```python\nso8t not bash\n```\n'
    )
    got = [(c.line, c.so8t_argv) for c in readme_commands(text) if c.so8t_argv is not None]
    assert got == [
        (3, ("approvals", "show", "ID")),
        (3, ("train", "--set", "lr=3e-4", "--set", "eval_every=15", "--out", "runs/x")),
        (5, ("data", "validate", "my file.jsonl")),
        (6, ("train", "--preset", "rtx3060-3b")),
    ]


@pytest.mark.parametrize("command", _params(SO8T_COMMANDS))
def test_every_so8t_command_in_the_readme_parses_and_its_presets_and_set_keys_exist(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = _parse(command)
    if args.command is not None:
        _check_config(command, args)


def test_a_flag_that_does_not_exist_fails_naming_the_readme_line():
    bad = readme_commands("```bash\n\nso8t train --preset cpu-quik --sett lr=1\n```\n")[0]
    with pytest.raises(pytest.fail.Exception, match=r"README.md:3: .*unrecognized arguments: --sett"):
        _parse(bad)


def test_an_abbreviated_flag_fails_too_although_argparse_would_take_it():
    bad = readme_commands("```bash\nso8t eval runs/quick --no-base\n```\n")[0]
    with pytest.raises(pytest.fail.Exception, match=r"README.md:2: .*unrecognized arguments: --no-base"):
        _parse(bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        ("train --preset cpu-quik", r"unknown preset 'cpu-quik' \(did you mean 'cpu-quick'\?\)"),
        ("train --set lerning_rate=1e-4", r"unknown key 'lerning_rate'"),
        ("train --set pooling=lastt", r"pooling"),
        (
            "serve runs/quick --set backend_urll=http://x",
            r"unknown key 'backend_urll' \(did you mean 'backend_url'\?\)",
        ),
        ("eval runs/quick --data builtin:tst", r"unknown split 'tst'.*did you mean 'builtin:test'"),
        ("eval runs/quick --baselines keyword,probe", r"unknown baseline 'keyword' \(did you mean 'keywords'\?\)"),
        (
            "data import do-not-answr x.csv -o y.jsonl",
            r"unknown importer 'do-not-answr' \(did you mean 'do-not-answer'\?\)",
        ),
        (
            "data import do-not-answer x.csv -o y.jsonl --map 'No such harm=REFUSE'",
            r"unknown mapping key 'No such harm'",
        ),
    ],
)
def test_a_wrong_preset_or_set_key_fails_naming_the_line_and_the_closest_name(argv, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = readme_commands(f"```bash\nso8t {argv}\n```\n")[0]
    with pytest.raises(pytest.fail.Exception, match=r"README.md:2: .*" + message):
        _check_config(bad, _parse(bad))


# ---------------------------------------------------------------- files that ship

_SHIPPED = re.compile(
    r"(?:\./)?(?:examples/[^\s=]+\.ya?ml|scripts/[^\s=]+\.(?:sh|py)|bench/[^\s=]+\.py|"
    r"heldout/[^\s=]+\.jsonl|setup\.sh)"
)


def _shipped_paths():
    seen = {}
    for c in COMMANDS:
        for word in c.words:
            for part in [word, *word.split("=")[1:]]:
                for token in shlex.split(part) if " " in part else [part]:
                    if _SHIPPED.fullmatch(token) and not any(ch in token for ch in "*?["):
                        seen.setdefault(token, c)
    return seen


def test_the_readme_mentions_the_files_this_test_checks():
    paths = _shipped_paths()  # so the next test cannot pass by finding nothing
    assert len(paths) >= 3 and any(p.startswith("examples/") for p in paths), sorted(paths)


@pytest.mark.parametrize("path", sorted(_shipped_paths()))
def test_every_file_the_readme_commands_name_ships_with_the_repository(path):
    c = _shipped_paths()[path]
    assert (ROOT / path).exists(), f"{c.where}: `{c.text}` names {path}, which is not in the repository"


# ---------------------------------------------------------------- the cheap ones, run


def _runnable(argv: tuple[str, ...]) -> bool:
    """Commands cheap and side-effect free enough to run here (seconds, no model weights)."""
    from so8t.data.builtin import parse_builtin_spec

    if argv and argv[-1] == "--help":
        return True
    if argv[:2] == ("data", "validate"):
        return all(parse_builtin_spec(a) is not None for a in argv[2:] if not a.startswith("-"))
    if argv[:2] == ("data", "import"):
        return "--list" in argv
    if argv[:1] == ("train",):
        return "--dry-run" in argv and "--config" not in argv and "--resume" not in argv
    if argv[:2] in {("approvals", "list"), ("audit", "verify"), ("audit", "tail")}:
        return "--config" in argv  # the example config: a fresh state folder under the temporary cwd
    if argv[:2] in {("policy", "check"), ("policy", "cases")}:
        return "--teacher-url" not in argv  # the example policy; the cases land under the temporary cwd
    return False


def _distinct(commands: list[Command]) -> dict[tuple[str, ...], list[Command]]:
    """The same argv in the English and the Japanese part is run once (each run costs seconds)."""
    out: dict[tuple[str, ...], list[Command]] = {}
    for c in commands:
        out.setdefault(c.so8t_argv, []).append(c)
    return out


RUNNABLE = _distinct([c for c in SO8T_COMMANDS if _runnable(c.so8t_argv)])


def _so8t_exe() -> list[str]:
    script = Path(sys.executable).parent / "so8t"
    return [str(script)] if script.exists() else [sys.executable, "-m", "so8t"]


def _run(argv, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    env.pop("SO8T_AUDIT_KEY", None)
    return subprocess.run(
        [*_so8t_exe(), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _workdir(tmp_path: Path, argv: tuple[str, ...]) -> Path:
    """A temporary folder with the files the README's commands read (examples/), and for the audit
    commands the log a server would have written there (the real AuditLog, two records): nothing
    they write (so8t-state/, runs/) lands in the repository."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    if argv[0] == "audit":
        from so8t.agent.audit import AuditLog
        from so8t.config import ServerConfig, load_yaml, resolve

        cfg = resolve(ServerConfig, (load_yaml(tmp_path / "examples" / "server.yaml"), "examples/server.yaml"))
        log = AuditLog(tmp_path / cfg.audit_path)
        log.append("readme.test", {"step": 1})
        log.append("readme.test", {"step": 2})
    return tmp_path


def test_the_readme_still_shows_the_cheap_commands_this_file_runs():
    shown = {" ".join(a for a in argv if a in {"data", "validate", "train", "--dry-run"}) for argv in RUNNABLE}
    assert {"data validate", "train --dry-run"} <= shown, sorted(shown)


def _run_params():
    out = []
    for argv, commands in RUNNABLE.items():
        drift = [KNOWN_DRIFT[c.text] for c in commands if c.text in KNOWN_DRIFT]
        where = "README.md:" + ",".join(str(c.line) for c in commands)
        out.append(
            pytest.param(
                commands,
                id=f"{where}:{' '.join(argv)[:60]}",
                marks=[pytest.mark.xfail(strict=True, reason=drift[0])] if drift else [],
            )
        )
    return out


@pytest.mark.parametrize("commands", _run_params())
def test_the_cheap_readme_commands_run_as_written_and_exit_0(commands, tmp_path):
    command = commands[0]
    where = ", ".join(c.where for c in commands)
    argv = command.so8t_argv
    if argv[0] == "train":  # the dry-run must stay an estimate from the config alone, no weights
        from so8t.train.memory import KNOWN_CONFIGS
        from so8t.train.presets import preset

        model = preset(build_parser().parse_args(list(argv)).preset or "cpu-quick")["model"]
        if model not in KNOWN_CONFIGS:
            pytest.skip(f"{where}: the dry-run of {model} would read its config from the hub")
    state_before = (ROOT / "so8t-state").exists()
    res = _run(argv, _workdir(tmp_path, argv))
    assert res.returncode == 0, f"{where}: `{command.text}` exited {res.returncode}:\n{res.stderr[-2000:]}"
    assert (ROOT / "so8t-state").exists() == state_before  # the example config's state went to tmp_path
    expected = {
        ("data", "validate"): "OK",
        ("data", "import"): "do-not-answer",
        ("train",): "peak GPU memory",
        ("approvals", "list"): "no approval requests",
        ("audit", "verify"): "OK: 2 records",
        ("audit", "tail"): "readme.test",
        ("policy", "check"): "OK",
        ("policy", "cases"): "per rule (train/test)",
    }
    shown = next(v for k, v in expected.items() if argv[: len(k)] == k)
    assert shown in res.stdout, f"{where}: `{command.text}` printed:\n{res.stdout[-2000:]}"


def test_so8t_help_and_every_subcommands_help_run_and_exit_0(tmp_path):
    for cmd in [(), *subcommands(build_parser())]:
        res = _run([*cmd, "--help"], tmp_path, timeout=20)
        assert res.returncode == 0 and res.stdout.startswith("usage: so8t"), (cmd, res.stderr[-1000:])
