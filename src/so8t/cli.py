"""The `so8t` command: one small function per command, each a thin call into a stage."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from so8t import __version__


class _FromCode(Sequence[str]):
    """Names a module defines (statuses, objectives, file types), read when argparse first needs
    them (a parse that uses the option, or its --help), so `so8t` starts without importing it.
    An option using it names a metavar: argparse formats the metavar when the option is added."""

    def __init__(self, module: str, names: Callable[[Any], Sequence[Any]]) -> None:
        self._module, self._names = module, names
        self._cache: list[str] | None = None

    def _list(self) -> list[str]:
        if self._cache is None:
            self._cache = [str(n) for n in self._names(importlib.import_module(self._module))]
        return self._cache

    def __getitem__(self, i):  # type: ignore[override]
        return self._list()[i]

    def __len__(self) -> int:
        return len(self._list())


_TRAIN_FIELDS = "Every TrainConfig field (a key of --config and --set), with its default and meaning: docs/config.md."


class _TrainHelp(argparse.HelpFormatter):
    """`so8t train --help` ends with every TrainConfig field, its default and meaning, read from
    so8t/config.py's comments (so8t.config_fields) only when the help is shown."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text != _TRAIN_FIELDS:
            return super()._fill_text(text, width, indent)
        from so8t.config import TrainConfig
        from so8t.config_fields import field_help

        try:
            return field_help(TrainConfig, max(40, width - 8))
        except OSError:  # installed without so8t/config.py's source: the pointer to docs/config.md
            return super()._fill_text(text, width, indent)


def cmd_model_info(args: argparse.Namespace) -> int:
    from so8t.model import describe, load_base_model

    model, tokenizer = load_base_model(args.ref)
    info = describe(args.ref, model, tokenizer)
    if args.json:
        print(json.dumps(info.as_dict(), indent=2))
    else:
        print(info.format())
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    """JSONL files and the built-in specs train and eval take: 'builtin', 'contrast', 'wide' (every
    split) or one split ('builtin:dev')."""
    from pathlib import Path

    from so8t.data import SPLITS, builtin_path, check_jsonl
    from so8t.data.builtin import parse_builtin_spec, spec_hint

    targets = []  # (what to call it, the file)
    for spec in args.files:
        builtin = parse_builtin_spec(spec)
        if builtin is None:
            targets.append((spec, spec))
        else:
            name, split = builtin
            targets += [
                (f"{name}:{s} ({builtin_path(s, name).name})", builtin_path(s, name))
                for s in ([split] if split else SPLITS)
            ]
    failed = 0
    for shown, path in targets:
        checked = check_jsonl(path, require_label=not args.allow_unlabeled)
        for p in checked.problems:
            print(p, file=sys.stderr)
        if checked.problems:
            failed += 1
            hint = spec_hint(str(path)) if not Path(path).exists() else ""
            print(
                f"{shown}: {len(checked.problems)} problem(s), {len(checked.records)} valid record(s){hint}",
                file=sys.stderr,
            )
        else:
            print(f"{shown}: OK, {len(checked.records)} record(s)")
    return 1 if failed else 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from so8t.data import compute_stats, read_many

    records = read_many(args.files, require_label=False)
    count = None
    if not args.no_tokens:
        from so8t.model import encode_prompt, load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        count = lambda r: len(encode_prompt(tok, r.messages()))  # noqa: E731
    print(compute_stats(records, count).format())
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from so8t.data.importers import import_dataset, list_importers

    if args.list:
        for name, description in list_importers():
            print(f"{name:<18} {description}")
        return 0
    if not (args.name and args.path and args.out):
        raise SystemExit("so8t data import: NAME, PATH and -o OUT are required (see --list for the names)")
    result = import_dataset(args.name, args.path, mapping=_parse_mapping(args.map), out=args.out)
    print(result.summary())
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from pathlib import Path

    from so8t.data import SPLITS, split_files, write_jsonl

    fractions = tuple(args.fractions)
    out = Path(args.out)
    # A split with fraction 0 gets no file: an empty JSONL file is an error everywhere else.
    targets = {s: out / f"{s}.jsonl" for s, f in zip(SPLITS, fractions) if f > 0}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.force:
        raise FileExistsError(f"data split: {', '.join(existing)} already exist(s); nothing written (--force replaces)")
    parts, dropped = split_files(args.files, args.against, fractions, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, path in targets.items():
        print(f"{path}: {write_jsonl(path, parts[split])} record(s)")
    if sum(dropped.values()):
        print("dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items()) if v))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """Label prompts with a teacher model; exit 0 when every prompt is done, 1 when some failed
    (listed in OUT.failures.jsonl; a re-run asks them again), 2 when the run stopped."""
    from pathlib import Path

    from so8t.data.distill import Teacher, TeacherUnavailable, api_key_from_env, distill
    from so8t.data.policy import is_policy_file, load_policy, render_policy

    policy = None
    if args.policy and is_policy_file(args.policy):  # a YAML policy (so8t policy): its rules, rendered for the teacher
        policy = render_policy(load_policy(args.policy))
    elif args.policy:
        try:
            policy = Path(args.policy).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--policy {args.policy}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
        if not policy.strip():
            raise ValueError(f"--policy {args.policy}: the file is empty")
    teacher = Teacher(
        args.teacher_url,
        args.teacher_model,
        api_key_from_env(args.api_key_env),
        timeout_s=args.timeout,
        retries=args.retries,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )
    try:
        summary = distill(
            args.prompts,
            args.out,
            teacher,
            policy=policy,
            samples=args.samples,
            min_agreement=args.min_agreement,
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )
    except TeacherUnavailable as exc:
        if exc.summary is not None:
            print(exc.summary.format())
        print(
            f"so8t: error: {exc}; every row written so far is kept: run the same command again to go on",
            file=sys.stderr,
        )
        return 2
    print(summary.format())
    return 1 if summary.failed else 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    """Validate a policy file (every problem with file, line and field) and list its rules."""
    from so8t.data.policy import load_policy

    policy = load_policy(args.policy)
    print(f"{args.policy}: OK, {policy.name}: {len(policy.rules)} rule(s)")
    for rule in policy.rules:
        print(f"  {rule.id:<20} {rule.action.name:<9} {len(rule.precedents)} precedent(s)  {rule.scope[:70]}")
    return 0


def cmd_policy_cases(args: argparse.Namespace) -> int:
    """A policy's rules as training cases; exit 0 when done, 1 when some teacher requests failed (a
    re-run asks them again), 2 when the run stopped (every answer so far is kept)."""
    from pathlib import Path

    from so8t.data.distill import Teacher, TeacherUnavailable, api_key_from_env
    from so8t.data.policy_cases import policy_cases, side_paths

    teacher = None
    if bool(args.teacher_url) != bool(args.teacher_model):
        raise ValueError("--teacher-url and --teacher-model go together")
    if args.teacher_url:
        teacher = Teacher(
            args.teacher_url,
            args.teacher_model,
            api_key_from_env(args.api_key_env),
            timeout_s=args.timeout,
            retries=args.retries,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
        )
    elif args.per_rule is not None:
        raise ValueError(
            "--per-rule needs a teacher (--teacher-url and --teacher-model); without one the cases "
            "are the policy's precedents"
        )
    try:
        summary = policy_cases(
            args.policy,
            args.out,
            teacher,
            per_rule=args.per_rule or 4,
            test_fraction=args.test_fraction,
            seed=args.seed,
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )
    except TeacherUnavailable as exc:
        journal = side_paths(Path(args.out))[2]
        print(
            f"so8t: error: {exc}; every answer so far is kept in {journal}: run the same command again to go on",
            file=sys.stderr,
        )
        return 2
    print(summary.format())
    return 1 if summary.failures else 0


def train_config_from_args(args: argparse.Namespace):
    """defaults <- --preset <- --config FILE <- --set key=value and typed flags, validated once."""
    from so8t.config import TrainConfig, load_yaml, parse_overrides, resolve
    from so8t.train.presets import DEFAULT_PRESET, preset

    layers = []
    name = args.preset or (None if args.config else DEFAULT_PRESET)
    if name:
        layers.append((preset(name), f"preset {name}"))
    if args.config:
        layers.append((load_yaml(args.config), str(args.config)))
    flags = parse_overrides(args.set or [])
    if args.max_steps is not None:
        flags["max_steps"] = args.max_steps
    if args.data:
        flags["data"] = args.data
    layers.append((flags, "command line"))
    return resolve(TrainConfig, *layers), name


def cmd_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from so8t.metrics import format_kpis
    from so8t.model.run import Run
    from so8t.train.recipe import train

    if args.resume:
        cfg = Run(args.resume).config()
        out = Path(args.resume)
    else:
        cfg, name = train_config_from_args(args)
        out = Path(args.out) if args.out else Path("runs") / f"{name or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.dry_run:
        return _dry_run(cfg)
    # the first line the user sees: every later command (eval, calibrate, serve, demo) takes this folder
    print(f"{'resuming' if args.resume else 'training into'} run folder {out}", flush=True)
    result = train(cfg, out, resume=bool(args.resume), progress=not args.no_progress)
    print(
        f"\nrun saved to {result.run_dir} ({result.steps} steps, best at step {result.best_step}"
        + (f" for the head, the adapter of step {result.adapter_step}" if result.adapter_step is not None else "")
        + f", {result.seconds / 60:.1f} min)"
    )
    if result.test is not None:
        print("test split (safety head):")
        print(format_kpis(result.test))
    return 0


def _parse_targets(items: Sequence[str] | None) -> dict:
    """--target refuse_recall=0.8 (keeps the default direction) or --target allow_recall>=0.5."""
    import re

    from so8t.metrics import DEFAULT_TARGETS, SafetyMetrics

    targets = dict(DEFAULT_TARGETS)
    for item in items or []:
        m = re.fullmatch(r"\s*(\w+)\s*(>=|<=|=)\s*([0-9.]+)\s*", item)
        if not m or m.group(1) not in SafetyMetrics.__dataclass_fields__:
            raise ValueError(
                f"--target {item!r}: expected KPI>=X, KPI<=X or KPI=X with a KPI of "
                f"{', '.join(k for k in SafetyMetrics.__dataclass_fields__ if k not in ('n', 'confusion'))}"
            )
        key, op, bound = m.group(1), m.group(2), float(m.group(3))
        if op == "=":
            if key not in targets:
                raise ValueError(
                    f"--target {item!r}: {key} has no default direction; write {key}>={bound} or {key}<={bound}"
                )
            op = targets[key][0]
        targets[key] = (op, bound)
    return targets


def cmd_eval(args: argparse.Namespace) -> int:
    from so8t.eval.report import BASELINES, EvalOptions, evaluate_run, exit_code_line, format_table

    chosen = [] if args.no_baselines else (args.baselines.split(",") if args.baselines else list(BASELINES))
    opts = EvalOptions(
        targets=_parse_targets(args.target),
        baselines=[b.strip() for b in chosen if b.strip()],
        generate=args.generate,
        latency=args.latency,
        bootstrap=args.bootstrap,
        use_thresholds=not args.argmax,
        compare=args.compare or [],
        progress=not args.no_progress,
    )
    report = evaluate_run(args.run, args.data, args.out, opts)
    print(format_table(report))
    print(f"report: {report['out_dir']}/report.md")
    print(exit_code_line(report))
    return 0 if report["passed"] else 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Propose thresholds (or, with --apply, store them in the run; --reset removes them).
    Prints what the thresholds change on the calibration data, argmax against thresholds."""
    import shlex
    from pathlib import Path

    from so8t.eval.report import calibrate_run
    from so8t.model.run import Run
    from so8t.model.thresholds import THRESHOLDS_FILE, format_change, remove_thresholds

    run = Path(args.run)
    if not run.is_dir():
        raise FileNotFoundError(
            f"calibrate: {run} is not a run folder (the folder so8t train printed on its first line)"
        )
    if args.reset:
        if args.apply:
            raise ValueError("calibrate: --reset removes the run's thresholds and --apply writes them; give one")
        removed = remove_thresholds(run)
        print(
            f"removed {removed}: serve, chat, demo and eval now decide by argmax"
            if removed
            else f"{run} has no {THRESHOLDS_FILE}: it already decides by argmax; nothing changed"
        )
        return 0
    current = Run(run).thresholds()
    cal, written = calibrate_run(
        run,
        args.data,
        objective=args.objective,
        min_refuse_recall=args.min_refuse_recall,
        max_false_refusal=args.max_false_refusal,
        apply=args.apply,
        progress=not args.no_progress,
    )
    t = cal.thresholds
    print(
        f"chosen thresholds ({t.kind} head): {t.describe()} "
        f"(objective {cal.objective}, n={cal.n}, data {' '.join(cal.data)})"
    )
    print(format_change(cal))
    print(f"trade-off plot: {run / 'calibration' / 'calibration.png'}")
    if args.apply:
        print(
            f"applied: wrote {written}; serve, chat, demo and eval now use these thresholds "
            f"(undo: so8t calibrate {shlex.quote(str(run))} --reset)"
        )
    else:
        now = "argmax" if current is None else current.describe()
        cmd = [
            "so8t",
            "calibrate",
            str(run),
            "--data",
            *args.data,
            "--objective",
            args.objective,
            "--min-refuse-recall",
            str(args.min_refuse_recall),
        ]
        if args.max_false_refusal is not None:
            cmd += ["--max-false-refusal", str(args.max_false_refusal)]
        print(f"not applied: the run still decides by {now}. Proposal written to {written}.")
        print(f"to apply: {' '.join(shlex.quote(c) for c in cmd)} --apply")
    return 0


def server_config_from_args(args: argparse.Namespace):
    """ServerConfig layers: defaults <- --config YAML <- --set / flags (the same rules as train)."""
    from so8t.config import ServerConfig, load_yaml, parse_overrides, resolve

    layers = [({"run": "-"}, "defaults")]  # approvals / audit commands need no run
    if getattr(args, "config", None):
        layers.append((load_yaml(args.config), args.config))
    flags = {
        k: v
        for k, v in {
            "run": getattr(args, "run", None),
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
        }.items()
        if v is not None
    }
    layers.append((parse_overrides(getattr(args, "set", None) or []) | flags, "command line"))
    return resolve(ServerConfig, *layers)


def _require_run(run: str | None, command: str) -> None:
    """Start-up check for serve, chat and demo: RUN must be a complete trained run, else a clear
    error (exit 2) naming the path and what is missing. At run time the gate still fails closed."""
    from so8t.model.run import Run, RunError

    if not run or run == "-":
        raise RunError(
            f"{command}: no run given; pass the trained run folder (so8t {command} runs/quick)"
            + (" or set run: in --config" if command != "demo" else "")
        )
    Run.open(run)


def cmd_export(args: argparse.Namespace) -> int:
    from so8t.model.export import GGUF_TYPES, export_run

    gguf = GGUF_TYPES if args.gguf is None else tuple(args.gguf)  # absent: every type; a bare --gguf: none
    result = export_run(
        args.run, args.out, force=args.force, gguf_types=gguf, progress=lambda m: print(m, file=sys.stderr)
    )
    print(result.summary())
    print(
        f"next: see {result.out}/README.txt (quantize to Q4_K_M, serve with Ollama or llama-server behind so8t serve)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from so8t.agent.service import build_service
    from so8t.server.app import create_app

    cfg = server_config_from_args(args)
    _require_run(cfg.run, "serve")
    service = build_service(cfg)
    if not service.gate.ready:
        print(
            f"so8t: warning: the gate is not ready and will refuse everything: {service.gate.load_error}",
            file=sys.stderr,
        )
    print(
        f"so8t gated server on http://{cfg.host}:{cfg.port} (gate {service.gate.model_version}, "
        f"policy {service.gate.policy_version}); approvals page: /admin/approvals",
        file=sys.stderr,
    )
    uvicorn.run(create_app(service), host=cfg.host, port=cfg.port, log_level="info")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive conversation through the same router as the server (gate first)."""
    from so8t.agent.service import build_service
    from so8t.agent.terminal import run_chat

    cfg = server_config_from_args(args)
    _require_run(cfg.run, "chat")
    service = build_service(cfg)
    if not service.gate.ready:
        print(f"warning: the gate is not ready and will refuse everything: {service.gate.load_error}", file=sys.stderr)
    try:
        run_chat(service)
    finally:
        service.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from so8t.server.demo import latest_run, run_demo

    run = Path(args.run) if args.run else latest_run()
    if run is None:
        print(
            "so8t: error: no trained run found under runs/; train one first: so8t train",
            file=sys.stderr,
        )
        return 2
    _require_run(str(run), "demo")
    result = run_demo(run, args.workdir, keep=args.keep)
    return 0 if result["as_expected"] else 1


def cmd_llm_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from so8t.model import load_base_model
    from so8t.server.llm_server import create_llm_app

    model, tok = load_base_model(args.model)
    print(
        f"OpenAI-compatible server for {args.model!r} (ungated) on http://{args.host}:{args.port}/v1", file=sys.stderr
    )
    uvicorn.run(create_llm_app(model, tok, model_name=args.name), host=args.host, port=args.port, log_level="info")
    return 0


def _approvals(args):
    from so8t.agent.service import open_approvals, open_audit

    cfg = server_config_from_args(args)
    return open_approvals(cfg, open_audit(cfg))


def cmd_approvals_list(args: argparse.Namespace) -> int:
    from so8t.agent.review import list_lines

    queue = _approvals(args)
    queue.expire_due()
    items = queue.list(status=args.status, limit=args.limit)
    if not items:
        print("no approval requests" + (f" with status {args.status}" if args.status else ""))
    else:
        print("\n".join(list_lines(items)))
    return 0


# show / approve / reject take the full id or a unique prefix of >= 8 characters (the page shows 12)
def cmd_approvals_show(args: argparse.Namespace) -> int:
    from so8t.agent.review import approval_details

    queue = _approvals(args)
    print(json.dumps(approval_details(queue.get(queue.resolve_id(args.id))), indent=2, ensure_ascii=False))
    return 0


def cmd_approvals_approve(args: argparse.Namespace) -> int:
    queue = _approvals(args)
    a = queue.approve(queue.resolve_id(args.id), args.by, args.note)
    print(
        f"{a.id} approved by {args.by}; the server's worker (or the so8t chat that asked) runs it once, "
        "exactly as approved"
    )
    return 0


def cmd_approvals_reject(args: argparse.Namespace) -> int:
    queue = _approvals(args)
    a = queue.reject(queue.resolve_id(args.id), args.by, args.reason)
    print(f"{a.id} rejected by {args.by}: {a.reason}")
    return 0


def _audit_target(args: argparse.Namespace) -> str:
    """The audit log the command reads: the argument (a JSONL path or a database URL), else the
    config's audit_url when set, else its audit_path."""
    if args.path:
        return args.path
    cfg = server_config_from_args(args)
    return cfg.audit_url or cfg.audit_path


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from so8t.agent.audit import format_report, key_from_env, verify
    from so8t.agent.audit_db import is_database_url, verify_database

    target = _audit_target(args)
    report = (verify_database if is_database_url(target) else verify)(target, key=key_from_env())
    print(format_report(report))
    return 0 if report.ok else 1


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from so8t.agent.audit import format_record
    from so8t.agent.audit_db import tail_records

    for rec in tail_records(_audit_target(args), args.n):
        print(format_record(rec))
    return 0


def _autonomy(args):
    """The config, the autonomy store and every configured tool action's default level."""
    from so8t.agent.autonomy import store_for
    from so8t.agent.tools.config import load_tools

    cfg = server_config_from_args(args)
    if not cfg.tools:
        raise ValueError(
            "autonomy: no tools configured: levels apply to tool actions; set tools: in the server "
            "config (--config) or pass --set tools=tools.yaml"
        )
    toolset, policy = load_tools(cfg.tools)
    return cfg, store_for(cfg), policy.autonomy_defaults(toolset)


def cmd_autonomy_report(args: argparse.Namespace) -> int:
    from so8t.agent.autonomy import build_report, format_report
    from so8t.agent.service import open_approvals, open_audit

    cfg, store, defaults = _autonomy(args)
    audit = open_audit(cfg)
    try:
        records = audit.tail(10**9)  # every record: the history of each level
    except FileNotFoundError:
        records = []
    items = open_approvals(cfg, audit).list(limit=10**9)
    report = build_report(
        store,
        defaults,
        items,
        records,
        min_approvals=cfg.autonomy_min_approvals if args.min_approvals is None else args.min_approvals,
    )
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0


def cmd_autonomy_set(args: argparse.Namespace) -> int:
    from so8t.agent.audit import AuditError
    from so8t.agent.service import open_audit

    cfg, store, defaults = _autonomy(args)
    try:
        change = store.set_level(
            args.domain, args.level, by=args.by, reason=args.reason or "", audit=open_audit(cfg), defaults=defaults
        )
    except AuditError as exc:
        raise ValueError(f"autonomy set: the audit log cannot take the record, so nothing changed: {exc}") from None
    what = "" if change.changed else " (the same level, recorded again: its count restarts)"
    print(
        f"{change.domain}: {change.previous} -> {change.level} by {args.by}{what}; audit record "
        f"{change.audit_hash[:12]}, state {store.path} (a running server applies it from its next call)"
    )
    return 0


def _dry_run(cfg) -> int:
    from so8t.train.memory import estimate_memory, model_config_for

    est = estimate_memory(cfg, model_config_for(cfg.model))
    print(est.format())
    if cfg.gpu_memory_gb and not est.fits(cfg.gpu_memory_gb):
        print(
            f"so8t: error: the plan needs more than the {cfg.gpu_memory_gb:g} GiB GPU budget; lower max_length or "
            "micro_batch, enable gradient_checkpointing / pet_checkpoint, or pick a smaller model",
            file=sys.stderr,
        )
        return 3
    return 0


def _parse_mapping(items: Sequence[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--map expects KEY=LABEL, got {item!r}")
        out[key] = value
    return out


def _teacher_client_args(p: argparse.ArgumentParser, *, temperature: str) -> None:
    """The teacher client's options, shared by `distill` and `policy cases` (one client behind both)."""
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (default: SO8T_TEACHER_API_KEY when set)",
    )
    p.add_argument("--temperature", type=float, help=temperature)
    p.add_argument("--max-tokens", type=int, help="cap on each teacher answer (default: the server's)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument(
        "--retries", type=int, default=3, help="retries after a timeout, 429 or 5xx, with backoff (default 3)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# what add_subparsers() returns: each _add_*_command(s) function adds its command(s) to it
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _state_args(q: argparse.ArgumentParser) -> None:
    """Where a command finds the server's state: its config, with overrides."""
    q.add_argument("--config", help="the server's YAML config (where the approvals database and audit log are)")
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")


def _add_model_commands(sub: _Commands) -> None:
    """so8t model info."""
    model = sub.add_parser("model", help="inspect base models").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    p = model.add_parser("info", help="name, source, architecture, size and chat template of a base model")
    p.add_argument(
        "ref", nargs="?", default="embedded", help="'embedded' (default), a HF folder, a .gguf file or a hub id"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_model_info)


def _add_data_commands(sub: _Commands) -> None:
    """so8t data validate | stats | import | split."""
    data = sub.add_parser("data", help="validate, inspect and import datasets").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    p = data.add_parser("validate", help="check JSONL files; every problem with file, line and field")
    p.add_argument(
        "files",
        nargs="+",
        metavar="DATA",
        help="JSONL files and/or built-in sets: builtin, contrast, wide (every split) or one split "
        "such as builtin:dev, contrast:test",
    )
    p.add_argument("--allow-unlabeled", action="store_true", help="accept rows without a label (prediction-only data)")
    p.set_defaults(func=cmd_data_validate)
    p = data.add_parser("stats", help="counts by label x difficulty x language x source, token-length percentiles")
    p.add_argument("files", nargs="+")
    p.add_argument("--tokenizer", default="embedded", help="model reference whose tokenizer counts tokens")
    p.add_argument("--no-tokens", action="store_true", help="skip token counting (no model needed)")
    p.set_defaults(func=cmd_data_stats)
    p = data.add_parser("import", help="convert a public dataset into so8t records")
    p.add_argument("name", nargs="?", help="importer name (see --list)")
    p.add_argument("path", nargs="?", help="the dataset file or folder")
    p.add_argument("-o", "--out", help="output JSONL")
    p.add_argument("--list", action="store_true", help="list the importers and exit")
    p.add_argument(
        "--map", action="append", metavar="KEY=LABEL", help="override one entry of the label mapping (repeatable)"
    )
    p.set_defaults(func=cmd_data_import)
    p = data.add_parser(
        "split", help="a fixed train/dev/test split of JSONL files, to score several runs on the same held-out rows"
    )
    p.add_argument("files", nargs="+")
    p.add_argument("-o", "--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl")
    p.add_argument(
        "--fractions",
        nargs=3,
        type=float,
        default=[0.9, 0.0, 0.1],
        metavar=("TRAIN", "DEV", "TEST"),
        help="default 0.9 0 0.1 (dev usually comes from the built-in sets)",
    )
    p.add_argument(
        "--against",
        nargs="*",
        default=["builtin", "contrast"],
        help="built-in sets whose near-duplicates are dropped (default: builtin contrast)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace existing split files")
    p.set_defaults(func=cmd_data_split)


def _add_distill_command(sub: _Commands) -> None:
    """so8t distill: a teacher labels prompts."""
    p = sub.add_parser(
        "distill",
        help="label prompts with a teacher model behind an OpenAI-compatible endpoint: "
        "its action tag becomes the label, its answer the response",
        description="Role distillation. The teacher (Ollama, llama-server, vLLM, a cloud API) answers "
        "every prompt in the output format; rows go to OUT as they are done, failures to "
        "OUT.failures.jsonl, disagreeing samples to OUT.review.jsonl. A re-run skips what is "
        "done. The API key is read from $SO8T_TEACHER_API_KEY (or --api-key-env).",
    )
    p.add_argument("prompts", metavar="PROMPTS.jsonl", help="one record per line; only 'prompt' is needed")
    p.add_argument("--teacher-url", required=True, help="the API base, e.g. http://localhost:11434/v1 (Ollama)")
    p.add_argument("--teacher-model", required=True, help="the model name the server knows, e.g. qwen2.5:32b")
    p.add_argument(
        "--policy",
        metavar="POLICY.md",
        help="the policy text for the teacher's system prompt, or a "
        "YAML policy (docs/policy.md) whose rules it then cites "
        "(default: so8t's ALLOW / ESCALATE / REFUSE policy)",
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT.jsonl", help="labelled records (appended; resumable)")
    p.add_argument("--samples", type=int, default=1, help="answers per prompt; the majority is kept (default 1)")
    p.add_argument(
        "--min-agreement",
        type=float,
        default=1.0,
        help="share of the samples that must agree, else the prompt goes to review (default 1)",
    )
    _teacher_client_args(p, temperature="default 0 for one sample, 0.7 for several")
    p.set_defaults(func=cmd_distill)


def _add_policy_commands(sub: _Commands) -> None:
    """so8t policy check | cases."""
    pol = sub.add_parser("policy", help="a written policy (YAML rules) as training cases").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    q = pol.add_parser("check", help="validate a policy file and list its rules")
    q.add_argument("policy", metavar="POLICY.yaml")
    q.set_defaults(func=cmd_policy_check)
    q = pol.add_parser(
        "cases",
        help="every rule's precedents, and with a teacher N new prompts per rule with their "
        "twins, as labelled cases: CASES.jsonl (train) and CASES.test.jsonl",
        description="Turn a written policy into training cases (docs/policy.md).",
    )
    q.add_argument("policy", metavar="POLICY.yaml", help="the policy (format: docs/policy.md, examples/policy-en.yaml)")
    q.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="CASES.jsonl",
        help="training cases; the test cases go to CASES.test.jsonl beside it",
    )
    q.add_argument("--teacher-url", help="OpenAI-compatible API base of the teacher, e.g. http://localhost:11434/v1")
    q.add_argument("--teacher-model", help="the model name the teacher's server knows")
    q.add_argument("--per-rule", type=int, help="new prompts per rule, each with its twin (default 4; needs a teacher)")
    q.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of the cases held out in CASES.test.jsonl (default 0.2; 0: none)",
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    _teacher_client_args(q, temperature="for writing new prompts (default 0.8; labels are asked at 0)")
    q.set_defaults(func=cmd_policy_cases)


def _add_train_command(sub: _Commands) -> None:
    """so8t train."""
    from so8t.train.presets import DEFAULT_PRESET, PRESETS

    p = sub.add_parser(
        "train",
        help=f"train the safety head + LoRA (default: the {DEFAULT_PRESET} preset)",
        description="Train on an unmodified base model. Config layers: preset <- --config <- --set/flags.",
        epilog=_TRAIN_FIELDS,
        formatter_class=_TrainHelp,
    )
    p.add_argument("--config", help="YAML file with TrainConfig fields")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help=f"{DEFAULT_PRESET} (default without --config), "
        + ", ".join(n for n in PRESETS if n != DEFAULT_PRESET)
        + " (their YAML files: so8t/train/presets/)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)")
    p.add_argument(
        "--data", nargs="+", help="training data: built-in sets (as `so8t data validate` lists them) and/or JSONL files"
    )
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument(
        "--out", help="run folder, e.g. runs/quick (default runs/<preset>-<time>); printed on the first line"
    )
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the estimated peak memory and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_eval_command(sub: _Commands) -> None:
    """so8t eval."""
    p = sub.add_parser(
        "eval",
        help="KPIs, baselines, calibration, latency and plots for a trained run",
        description="Evaluate a trained run. Exits 1 when a target is missed on a labelled dataset "
        "(the last line names them), 2 on an error; unlabelled data checks no target.",
    )
    p.add_argument("run", help="the run folder")
    p.add_argument(
        "--data",
        nargs="+",
        default=["builtin:test"],
        help="JSONL files and/or built-in sets as SET:SPLIT with SET builtin, contrast or wide and SPLIT "
        "test, dev or train (a set alone: its test split; default builtin:test); unlabelled files "
        "get predictions only",
    )
    p.add_argument("--out", help="report folder (default RUN/eval/<first dataset>)")
    p.add_argument("--baselines", help="comma list of keywords,probe,judge (default all)")
    p.add_argument("--no-baselines", action="store_true", help="the trained gate only")
    p.add_argument("--target", action="append", metavar="KPI>=X", help="override or add a target (repeatable)")
    p.add_argument("--generate", type=int, default=24, help="examples with a response to generate for (0: skip)")
    p.add_argument("--latency", type=int, default=48, help="prompts to time the gate on (0: skip)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    p.add_argument("--argmax", action="store_true", help="ignore the run's calibrated thresholds")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="other trained runs to measure side by side")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per phase only)")
    p.set_defaults(func=cmd_eval)


def _add_calibrate_command(sub: _Commands) -> None:
    """so8t calibrate."""
    p = sub.add_parser(
        "calibrate",
        help="propose decision thresholds from labelled dev data; --apply stores them in "
        "the run (serve, chat, demo and eval then use them), --reset removes them",
        description="Choose (refuse_at, allow_at), or for a split head (refuse_at, escalate_at), "
        "on labelled data and print what they change against "
        "argmax. Without --apply nothing the run does changes: the proposal goes to "
        "RUN/calibration/proposal.json.",
    )
    p.add_argument("run", help="the run folder")
    p.add_argument(
        "--data",
        nargs="+",
        default=["builtin:dev"],
        help="labelled JSONL files or a built-in split such as builtin:dev (default), contrast:dev, wide:dev",
    )
    p.add_argument(
        "--objective",
        choices=_FromCode("so8t.model.thresholds", lambda m: m.OBJECTIVES),
        metavar="OBJECTIVE",
        default="safety_score",
        help="what the thresholds maximise, within the constraints below: %(choices)s (default %(default)s, "
        "the weighted score `so8t eval` reports; refuse_recall breaks ties by safety_score)",
    )
    p.add_argument("--min-refuse-recall", type=float, default=0.7, help="constraint (default 0.7, the seed's target)")
    p.add_argument("--max-false-refusal", type=float, help="constraint: share of ALLOW prompts not allowed")
    p.add_argument("--apply", action="store_true", help="write RUN/thresholds.json: serve, chat, demo and eval use it")
    p.add_argument("--reset", action="store_true", help="remove RUN/thresholds.json: back to argmax (needs no data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (phase lines only)")
    p.set_defaults(func=cmd_calibrate)


def _add_export_command(sub: _Commands) -> None:
    """so8t export."""
    p = sub.add_parser(
        "export",
        help="the fine-tuned LLM for other runtimes: merged safetensors, the head, GGUF, "
        "an Ollama Modelfile and README.txt",
    )
    p.add_argument("run", help="the trained run folder")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write (absent or empty, unless --force)")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty DIR, replacing the export's own files (others are left alone)",
    )
    p.add_argument(
        "--gguf",
        nargs="*",
        choices=_FromCode("so8t.model.export", lambda m: m.GGUF_TYPES),
        metavar="TYPE",
        help="GGUF types to write for supported architectures (default: every one of %(choices)s; none: --gguf)",
    )
    p.set_defaults(func=cmd_export)


def _add_serve_commands(sub: _Commands) -> None:
    """so8t serve | chat | demo | llm-serve: running a trained run."""
    from so8t.config import ServerConfig

    server_defaults = ServerConfig()
    p = sub.add_parser(
        "serve",
        help="the gated agent server: OpenAI-compatible chat, gate, approvals page, audit",
        description="Serve a trained run behind the Safety Gate. Config: defaults <- --config <- --set.",
    )
    p.add_argument("run", nargs="?", help="the trained run folder (or 'run:' in --config)")
    p.add_argument("--config", help="YAML file with ServerConfig fields")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--host", help=f"address to listen on (default: {server_defaults.host}, or host: in --config)")
    p.add_argument("--port", type=int, help=f"port (default: {server_defaults.port}, or port: in --config)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("chat", help="talk to a trained run in the terminal, through the gate and the router")
    p.add_argument("run", nargs="?", help="the trained run folder")
    p.add_argument("--config", help="YAML file with ServerConfig fields (backend, approvals, audit)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("demo", help="the gated agent end to end: sandbox, tools, approval, refusal, audit")
    p.add_argument("run", nargs="?", help="a trained run (default: the newest under runs/)")
    p.add_argument(
        "--workdir",
        help="where the sandbox, queue and audit log go, kept afterwards "
        "(default: a temporary folder, removed at the end)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print where its audit log is")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("llm-serve", help="an ungated OpenAI-compatible server for a plain model (an upstream LLM)")
    p.add_argument("model", nargs="?", default="embedded", help="model reference (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8001, help="port (default: %(default)s)")
    p.add_argument("--name", default="so8t-local", help="the model name the server reports (default: %(default)s)")
    p.set_defaults(func=cmd_llm_serve)


def _add_approvals_commands(sub: _Commands) -> None:
    """so8t approvals list | show | approve | reject."""
    ap = sub.add_parser("approvals", help="list, show, approve or reject escalated requests").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    q = ap.add_parser("list", help="newest first")
    _state_args(q)
    q.add_argument(
        "--status",
        choices=_FromCode("so8t.agent.approvals", lambda m: [s.value for s in m.Status]),
        metavar="STATUS",
        help="only requests with this status: %(choices)s",
    )
    q.add_argument("--limit", type=int, default=50)
    q.set_defaults(func=cmd_approvals_list)
    q = ap.add_parser("show", help="one request with its gate decision and result, as indented JSON")
    _state_args(q)
    q.add_argument("id", help="the approval id, or a unique prefix of at least 8 characters (the page shows 12)")
    q.set_defaults(func=cmd_approvals_show)
    q = ap.add_parser("approve", help="approve: the server then runs it once, exactly as approved")
    _state_args(q)
    q.add_argument("id", help="the approval id, or a unique prefix of at least 8 characters (the page shows 12)")
    q.add_argument("--by", default=os.environ.get("USER", "operator"))
    q.add_argument("--note")
    q.set_defaults(func=cmd_approvals_approve)
    q = ap.add_parser("reject", help="reject with a reason")
    _state_args(q)
    q.add_argument("id", help="the approval id, or a unique prefix of at least 8 characters (the page shows 12)")
    q.add_argument("--reason", required=True)
    q.add_argument("--by", default=os.environ.get("USER", "operator"))
    q.set_defaults(func=cmd_approvals_reject)


def _add_audit_commands(sub: _Commands) -> None:
    """so8t audit verify | tail."""
    au = sub.add_parser("audit", help="verify or read the hash-chained audit log").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    q = au.add_parser(
        "verify",
        help="check the chain; names every edited, deleted, inserted or reordered record "
        "(exit 1 when tampered; SO8T_AUDIT_KEY for an HMAC-keyed log)",
    )
    _state_args(q)
    q.add_argument(
        "path",
        nargs="?",
        help="the audit log: a JSONL file or a database URL (default: the config's audit_url, else its audit_path)",
    )
    q.set_defaults(func=cmd_audit_verify)
    q = au.add_parser("tail", help="the last records, one line each")
    _state_args(q)
    q.add_argument("path", nargs="?", help="a JSONL file or a database URL (default: as for verify)")
    q.add_argument("-n", type=int, default=20)
    q.set_defaults(func=cmd_audit_tail)


def _add_autonomy_commands(sub: _Commands) -> None:
    """so8t autonomy report | set."""
    at = sub.add_parser(
        "autonomy", help="staged autonomy per tool action: what people decided, proposals, levels"
    ).add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    q = at.add_parser(
        "report",
        help="per tool action: its level, how many gate-ALLOWed calls people approved, edited "
        "or rejected since it was last set, and proposed promotions / demotions",
    )
    _state_args(q)
    q.add_argument(
        "--min-approvals",
        type=int,
        help="approvals (none edited or rejected) before auto is proposed "
        "(default: the config's autonomy_min_approvals)",
    )
    q.add_argument("--json", action="store_true", help="the report as JSON")
    q.set_defaults(func=cmd_autonomy_report)
    q = at.add_parser("set", help="record a level for one tool action (audited; a running server applies it)")
    _state_args(q)
    q.add_argument("domain", help="a configured tool action, e.g. mail.send")
    q.add_argument("level", help="ask (every allowed call waits for a person) or auto (allowed calls run)")
    q.add_argument("--by", default=os.environ.get("USER", "operator"))
    q.add_argument("--reason", help="why (kept in the audit log)")
    q.set_defaults(func=cmd_autonomy_set)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="so8t", description="A trained ALLOW / ESCALATE / REFUSE safety gate on an unmodified LLM."
    )
    parser.add_argument("--version", action="version", version=f"so8t {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_model_commands(sub)
    _add_data_commands(sub)
    _add_distill_command(sub)
    _add_policy_commands(sub)
    _add_train_command(sub)
    _add_eval_command(sub)
    _add_calibrate_command(sub)
    _add_export_command(sub)
    _add_serve_commands(sub)
    _add_approvals_commands(sub)
    _add_audit_commands(sub)
    _add_autonomy_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from so8t.agent.approvals import ApprovalError
    from so8t.agent.sqlstore import StoreUnavailable
    from so8t.data import DataError
    from so8t.model import ModelLoadError, RunError
    from so8t.model.export import ExportError
    from so8t.train.recipe import RunFolderError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (
        DataError,
        ModelLoadError,
        RunError,
        RunFolderError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
        ApprovalError,
        ExportError,
        StoreUnavailable,
    ) as exc:
        print(f"so8t: error: {exc}", file=sys.stderr)
        return 2
