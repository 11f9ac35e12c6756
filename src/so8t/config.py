"""Typed configs: one dataclass per stage, read from YAML, overridden by `key=value`, validated.

The dataclass is the schema: an unknown key, a wrong type or an out-of-range value is an
error that names the key (and the file when it came from one).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


@dataclasses.dataclass
class TrainConfig:
    # --- base model (stage: model) ---
    model: str = "embedded"  # 'embedded', a HF folder, a .gguf file or a hub id
    load_in_4bit: bool = False  # QLoRA: NF4 + double quantization, bf16 compute (CUDA)
    dtype: str = "float32"  # body dtype when not 4-bit: float32 | bfloat16 | float16
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast for matmuls (bf16 halves CPU time on AMX/AVX512-BF16)
    gpu_memory_gb: float = 0.0  # budget checked by --dry-run (0 = no GPU budget)
    # --- data ---
    # 'builtin' (the office-agent set), 'contrast' (safe/unsafe twin pairs), 'wide' (the hazard
    # taxonomy x agent actions) and/or JSONL files
    data: list[str] = dataclasses.field(default_factory=lambda: ["builtin", "contrast", "wide"])
    dev_data: list[str] = dataclasses.field(default_factory=list)  # empty: builtin dev / a split of `data`
    test_data: list[str] = dataclasses.field(default_factory=list)  # empty: builtin test / a split of `data`
    # scale each source's share of the training split: {'xsafety': 0.3, 'so8t-wide': 2} (1 = as is)
    source_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    max_length: int = 384  # tokens per example (prompt + response)
    class_balance: Literal["sampler", "weights", "none"] = (
        "sampler"  # equal labels per batch, or loss weights, or neither
    )
    sft_response_tokens: int = 0  # SFT on the response's first N tokens only (0 = all of it)
    # --- adapter ---
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale (alpha / r multiplies the update)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    # the linear modules LoRA adapts (names as in the base model)
    lora_targets: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )
    lora_layers: int = 0  # adapt only the top N blocks (0 = all); backward stops there
    # --- safety head ---
    pooling: Literal["mean", "last"] = "mean"  # over the prompt tokens of the hidden states the head reads
    # what the head reads: "chat" (the conversation as the LLM sees it; one pass for gate and answer)
    # or "question" (the conversation inside a fixed question about harm; its own pass)
    head_prompt: Literal["chat", "question"] = "chat"
    head_layers: str | list[int] = (
        "last"  # 'last' (final state), 'mix' (blocks across the upper two thirds), or indices
    )
    head_combine: Literal["concat", "mix"] = "concat"  # several layers: side by side, or a learned softmax average
    # 'three_way': one head -> ALLOW / ESCALATE / REFUSE; 'split': a primary head (REFUSE vs the
    # rest) and an escalation judge (needs a person?), decided by refuse_at then escalate_at
    head_kind: Literal["three_way", "split"] = "three_way"
    head_split_weight: float = 1.0  # split heads: weight of each head's own binary loss
    head_probe_steps: int = 0  # fit the head alone on frozen features first (LP-FT); 0 = off
    head_probe_examples: int = 1024  # class-balanced training examples whose features the probe uses
    head_probe_lr: float = 1e-3  # probe learning rate, decayed to 0 (cosine)
    head_probe_batch: int = 32  # examples per probe step
    # --- loss: L = sft + alpha*ce + beta*dangerous_allow - gamma*good_escalate + pet(t)*pet ---
    alpha: float = 3.0  # weight of the safety head's cross-entropy
    beta: float = 7.0  # weight of the dangerous-ALLOW penalty (P(ALLOW) on REFUSE / ESCALATE rows)
    gamma: float = 1.5  # weight of the reward for ESCALATE on grey (ESCALATE) rows
    pair_margin: float = 0.0  # weight of the contrast-pair margin term (0: off)
    pair_margin_value: float = 0.5  # the unsafe twin's 1-P(ALLOW) must exceed the safe half's by this
    safe_allow_reward: float = 0.0  # phase 2, off by default
    escalate_penalty: float = 0.0  # phase 2, off by default
    # training fractions where lambda_pet steps
    pet_boundaries: list[float] = dataclasses.field(default_factory=lambda: [0.3, 0.6])
    pet_values: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.15, 1.0])  # lambda_pet in each phase
    pet_normalize: bool = True  # divide each layer's term by its mean squared activation
    pet_checkpoint: bool = False  # recompute PET in backward instead of storing differences
    # --- optimisation ---
    lr: float = 1e-4  # LoRA (body and task head)
    head_lr: float = 1e-5  # safety head
    head_freeze_at: float = 0.5  # fraction of training after which the head is frozen (1.0 = never)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.03  # fraction of steps with a linear warm-up
    epochs: float = 1.0  # passes over the training data (when max_steps is 0)
    max_steps: int = 0  # optimizer steps; 0 = from epochs
    micro_batch: int = 4  # examples per forward pass
    grad_accum: int = 4  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    optim: Literal["adamw", "paged_adamw_8bit"] = "adamw"  # paged 8-bit AdamW needs CUDA + bitsandbytes
    # --- evaluation and stopping ---
    eval_every: int = 50  # optimizer steps
    early_stop_metric: Literal["safety_score", "refuse_recall", "macro_f1"] = (
        "safety_score"  # dev KPI that picks the best step
    )
    patience: int = 3  # evaluations without improvement
    # choose the decision thresholds (refuse_at, allow_at; a split head: refuse_at, escalate_at) on
    # the dev split at the end, as `so8t calibrate --apply` would (objective safety_score), and
    # write them into the run
    calibrate: bool = False
    seed: int = 0  # data order, sampling and head initialisation

    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{key}: {msg}")

        need(self.max_length >= 16, "max_length", "must be >= 16")
        bad = {k: w for k, w in self.source_weights.items() if not 0 <= w < float("inf")}
        need(not bad, "source_weights", f"weights must be finite numbers >= 0, got {bad}")
        need(self.sft_response_tokens >= 0, "sft_response_tokens", "must be >= 0 (0 = the whole response)")
        need(self.lora_r > 0, "lora_r", "must be > 0")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        need(bool(self.lora_targets), "lora_targets", "must name at least one module")
        need(self.lora_layers >= 0, "lora_layers", "must be >= 0 (0 = every block)")
        need(
            not isinstance(self.head_layers, str) or self.head_layers in ("last", "mix"),
            "head_layers",
            f"expected 'last', 'mix' or a list of layer indices, got {self.head_layers!r}",
        )
        need(isinstance(self.head_layers, str) or bool(self.head_layers), "head_layers", "an empty list reads nothing")
        need(
            self.head_combine in ("concat", "mix"),
            "head_combine",
            f"expected 'concat' or 'mix', got {self.head_combine!r}",
        )
        need(
            self.head_prompt in ("chat", "question"),
            "head_prompt",
            f"expected 'chat' or 'question', got {self.head_prompt!r}",
        )
        need(
            self.head_kind in ("three_way", "split"),
            "head_kind",
            f"expected 'three_way' or 'split', got {self.head_kind!r}",
        )
        need(self.head_probe_batch >= 1, "head_probe_batch", "must be >= 1")
        need(
            self.head_probe_steps >= 0 and self.head_probe_examples >= 1 and self.head_probe_lr > 0,
            "head_probe_steps",
            "head_probe_steps >= 0, head_probe_examples >= 1 and head_probe_lr > 0",
        )
        for key in (
            "alpha",
            "beta",
            "gamma",
            "safe_allow_reward",
            "escalate_penalty",
            "pair_margin",
            "head_split_weight",
        ):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        need(
            len(self.pet_values) == len(self.pet_boundaries) + 1,
            "pet_values",
            "needs one value more than pet_boundaries (a value for each interval)",
        )
        need(
            list(self.pet_boundaries) == sorted(self.pet_boundaries) and all(0 <= b <= 1 for b in self.pet_boundaries),
            "pet_boundaries",
            "must be increasing fractions in [0, 1]",
        )
        need(all(v >= 0 for v in self.pet_values), "pet_values", "must be >= 0")
        need(self.lr > 0 and self.head_lr >= 0, "lr", "learning rates must be positive")
        need(0 <= self.head_freeze_at <= 1, "head_freeze_at", "must be in [0, 1]")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        need(self.epochs > 0 or self.max_steps > 0, "epochs", "set epochs > 0 or max_steps > 0")
        need(self.max_steps >= 0, "max_steps", "must be >= 0")
        need(self.micro_batch >= 1 and self.grad_accum >= 1, "micro_batch", "micro_batch and grad_accum must be >= 1")
        need(self.eval_every >= 1, "eval_every", "must be >= 1")
        need(self.patience >= 1, "patience", "must be >= 1")
        need(bool(self.data), "data", "needs at least one dataset")


@dataclasses.dataclass
class ServerConfig:
    """`so8t serve`: the gate, the router, the LLM backend, approvals and the audit log.

    Policy lives here, on the server: no request field or header can change it. Secrets (the
    admin token, a backend API key, the audit HMAC key) come from environment variables named
    here, never from the YAML file itself.
    """

    run: str = ""  # the trained run folder the gate loads
    host: str = "127.0.0.1"  # address to listen on (loopback by default)
    port: int = 8000  # port to listen on
    # --- gate ---
    fail_action: Literal["REFUSE", "ESCALATE"] = "REFUSE"  # what a failed gate does (never ALLOW)
    gate_timeout_s: float = 10.0  # a decision slower than this fails closed (fail_action)
    gate_max_views: int = 64  # turns + windows of long text judged per request; beyond: 413
    gate_max_turns: int = 512  # messages per request; beyond: 413, before anything is scored
    gate_max_chars: int = 200_000  # characters of all messages together; beyond: 413
    gate_max_tokens: int = 50_000  # tokens of the whole conversation; beyond: 413
    gate_queue_max: int = 32  # requests waiting for the gate (the one scored included); beyond: 503
    # Concurrent requests scored together in one forward pass of the gate; each decision is the
    # one the request would get alone (right padding, masks). Off: one request at a time.
    gate_batching: bool = True
    # how long the oldest waiting request waits for others to join (0: only those already waiting)
    gate_batch_window_ms: float = 5.0
    # most prompts (a request's turns and windows count each) in one forward pass of the gate
    gate_batch_max: int = 16
    # The gate's forward: 'run' (the run's own amp, as trained), 'fp32', 'bf16' (autocast; fast with
    # native CPU bf16) or 'int8' (dynamic int8 quantization of the blocks' linear layers, CPU).
    # bench/gate_latency.py measures the agreement of each with fp32 and their safety KPIs.
    gate_precision: Literal["run", "fp32", "bf16", "int8"] = "run"
    # oneDNN kernels kept per input shape on a CPU (ONEDNN_PRIMITIVE_CACHE_CAPACITY; the environment
    # variable wins when set). A batching gate meets every batch size x length: with oneDNN's default
    # of 1,024 the server's memory grew by ~400 MiB more and did not level off, at no gain in speed
    # (bench/load.py, README "Under load"). 0: none kept; -1: oneDNN's default.
    gate_kernel_cache: int = 0
    each_turn: bool = True  # judge every user turn too, not only the conversation
    use_thresholds: bool = True  # the run's calibrated thresholds.json, when present
    self_test: bool = True  # at start: blunt dangerous prompts must not be ALLOWed, else not ready
    shadow: bool = False  # observe only: log what the gate would do, answer everything
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    # --- LLM backend for allowed requests ---
    backend: Literal["in-process", "openai"] = "in-process"  # in-process: the fine-tuned model itself
    backend_url: str = ""  # OpenAI-compatible base URL with /v1 (Ollama, llama-server, vLLM)
    backend_model: str = ""  # model name sent to the backend
    backend_api_key_env: str = "SO8T_BACKEND_API_KEY"  # environment variable holding the backend's API key
    backend_timeout_s: float = 60.0  # per backend request; then 504
    backend_retries: int = 2  # retries on timeouts, 429 and 5xx, with backoff
    max_tokens: int = 256  # answer length cap for the LLM
    # --- agent tools (off when empty) ---
    tools: str = ""  # tools YAML: which tools, where, autonomy per risk tier
    tool_max_steps: int = 6  # tool rounds per request
    # Staged autonomy: the levels (ask / auto per tool action) recorded with `so8t autonomy set`,
    # a JSON file replaced atomically; unreadable means every action waits for a person (ask).
    # Empty: autonomy.json next to audit_path.
    autonomy_path: str = ""
    # `so8t autonomy report` proposes auto after this many approvals, none edited or rejected
    autonomy_min_approvals: int = 20
    # --- approvals and audit ---
    approvals_url: str = "sqlite:///so8t-state/approvals.db"  # any SQLAlchemy URL
    approval_ttl_s: float = 3600.0  # an unanswered approval expires (TIMEOUT, denied)
    audit_path: str = "so8t-state/audit.jsonl"  # the hash-chained JSONL audit log
    # The audit chain in a database instead of audit_path: a SQLAlchemy URL, SQLite or PostgreSQL
    # (postgresql+psycopg://user:password@host/db). Replicas sharing one chain set the same URL;
    # verify with `so8t audit verify <url>`. Empty: the JSONL file.
    audit_url: str = ""
    audit_allow: bool = False  # also log ALLOW decisions
    redact_patterns: list[str] = dataclasses.field(default_factory=list)  # extra 'name=regex' redactions
    redact_disable: list[str] = dataclasses.field(default_factory=list)  # default patterns to switch off
    admin_token_env: str = "SO8T_ADMIN_TOKEN"  # token for the approvals page and API
    admin_session_ttl_s: float = 8 * 3600.0  # an operator's sign-in lasts this long (in-memory session)
    worker_interval_s: float = 2.0  # how often expiry runs and approved requests execute

    def validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{key}: {why}")

        need(bool(self.run), "run", "the trained run folder is required")
        need(1 <= self.port <= 65535, "port", "must be 1-65535")
        need(self.gate_timeout_s > 0, "gate_timeout_s", "must be > 0")
        for key in ("gate_max_views", "gate_max_turns", "gate_max_chars", "gate_max_tokens", "gate_queue_max"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        need(
            self.gate_batch_max >= 1,
            "gate_batch_max",
            f"must be >= 1 (the most prompts one forward pass of the gate scores), got {self.gate_batch_max}",
        )
        need(self.gate_kernel_cache >= -1, "gate_kernel_cache", f"must be >= -1, got {self.gate_kernel_cache}")
        need(
            0 <= self.gate_batch_window_ms < self.gate_timeout_s * 1000,
            "gate_batch_window_ms",
            f"must be >= 0 and shorter than gate_timeout_s ({self.gate_timeout_s:g} s), "
            f"got {self.gate_batch_window_ms}",
        )
        need(
            self.backend != "openai" or bool(self.backend_url),
            "backend_url",
            "needed for backend 'openai' (e.g. http://localhost:11434/v1)",
        )
        need(self.backend != "openai" or bool(self.backend_model), "backend_model", "needed for backend 'openai'")
        need(self.approval_ttl_s > 0, "approval_ttl_s", "must be > 0")
        need(self.max_tokens >= 1, "max_tokens", "must be >= 1")
        need(self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024")
        need(self.worker_interval_s > 0, "worker_interval_s", "must be > 0")
        need(self.admin_session_ttl_s > 0, "admin_session_ttl_s", "must be > 0")
        need(self.autonomy_min_approvals >= 1, "autonomy_min_approvals", "must be >= 1")
        for item in self.redact_patterns:
            need("=" in item, "redact_patterns", f"expected 'name=regex', got {item!r}")
        need(
            "://" in self.approvals_url,
            "approvals_url",
            "expected a database URL such as "
            "sqlite:///so8t-state/approvals.db or postgresql+psycopg://user:password@host/so8t",
        )
        need(
            not self.audit_url or self.audit_url.split("://", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql"),
            "audit_url",
            "expected a SQLite or PostgreSQL URL such as sqlite:///so8t-state/audit.db or "
            "postgresql+psycopg://user:password@host/so8t (empty: the JSONL file audit_path)",
        )


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build a config from a mapping, checking every key and type against the dataclass."""
    check_keys(cls, values, where)
    hints = get_type_hints(cls)
    kwargs = {key: _coerce(value, hints[key], f"{where}: {key}") for key, value in values.items()}
    cfg = cls(**kwargs)
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return cfg


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(hint)))}")
        return value
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    if origin is dict:
        key_hint, value_hint = get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping such as {{name: value}}, got {value!r}")
        return {_coerce(k, key_hint, where): _coerce(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(hint):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {hint}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null")
        return None
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return values or {}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as YAML scalars/lists (`lr=2e-4`, `data=[a.jsonl,b.jsonl]`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def resolve(cls: type[T], *layers: tuple[dict[str, Any], str]) -> T:
    """Merge (values, where) layers left to right over the defaults, then validate once."""
    merged: dict[str, Any] = {}
    for values, where in layers:
        check_keys(cls, values, where)  # so an unknown key is reported with the layer it came from
        merged.update(values)
    return from_dict(cls, merged, "config")


def check_keys(cls: type, values: Any, where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
