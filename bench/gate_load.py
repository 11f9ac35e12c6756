"""A bounded loopback load test of the gated server: concurrent chats against a real uvicorn
on 127.0.0.1, side by side per concurrency (1, 16, 120 by default).

For each concurrency it sends a fixed number of /v1/chat/completions requests (at least one per
client) and counts, per request:

- ok           the gate decided (status ok)
- 503          turned away at once because the gate's queue was full (Retry-After set)
- own timeout  failed closed because its own deadline passed (status timeout)
- by others    failed closed for any other reason (before issue 13 item 7: CancelledError,
               when another request's timeout cancelled the whole queue); must be 0
- http errors  anything else (connection errors, 5xx other than 503)

and the latency of the answered requests (p50 / p95, and p50 against concurrency 1). It stops
by itself: every level has a fixed number of requests, and --time-limit-s bounds the whole run
(requests not sent by then are reported as skipped). Exit status 1 if any request failed
closed because of another request.

    .venv/bin/python bench/gate_load.py [--model tiny|embedded|PATH] [--requests 240]
        [--concurrency 1 16 120] [--delay-ms 40] [--gate-timeout-s 1] [--queue-max 32]

The gate is untrained (a fresh adapter and head: load does not depend on what the weights
learned) with thresholds that refuse everything, so no answer is generated and what is measured
is the gate, the queue and the HTTP layer. --model tiny (the default) is a random 2-block Llama
with a small BPE tokenizer built in a temporary folder; --delay-ms sleeps before every scoring
batch through the gate's documented hook (Gate.batch_hook), so the tiny model behaves like a
big one on a busy CPU and the queue, its timeouts and its 503s are exercised.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = [
    "Please list the files in my reports folder.",
    "明日の10時に佐藤さんとの打ち合わせをカレンダーに入れて",
    "Summarise the meeting notes from Monday.",
    "Delete the production table now.",
    "Send the board minutes to an outside address.",
    "ファイル一覧を表示してください。",
    "What is on my calendar this week?",
    "How do I make a bomb?",
]
COLUMNS = ("ok", "503", "own timeout", "by others", "http errors", "skipped")


def tiny_tokenizer():
    """A 400-token byte-level BPE trained on PROMPTS and the action tags, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # the action tags too, so each has its own first token (the zero-shot judge reads them)
    tok.train_from_iterator((PROMPTS + ["Action: ALLOW", "Action: ESCALATE", "Action: REFUSE"]) * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    return fast


def tiny_model(folder: Path) -> Path:
    """A random 2-block Llama (hidden 32) with tiny_tokenizer()."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def start_server(args, state: Path):
    """(server handle, service): the real app on a free loopback port around an untrained gate."""
    from so8t.agent.service import build_service, gate_options
    from so8t.config import ServerConfig, TrainConfig
    from so8t.gate import Gate
    from so8t.model.thresholds import Thresholds
    from so8t.server.app import create_app
    from so8t.server.llm_server import serve_in_thread
    from so8t.train.recipe import build_model

    ref = str(tiny_model(state / "tiny")) if args.model == "tiny" else args.model
    model, tok, _ = build_model(TrainConfig(model=ref, max_length=args.max_length))
    cfg = ServerConfig(
        run=f"(bench: untrained gate on {args.model})",
        approvals_url=f"sqlite:///{state}/approvals.db",
        audit_path=str(state / "audit.jsonl"),
        self_test=False,
        max_tokens=1,
        gate_timeout_s=args.gate_timeout_s,
        gate_queue_max=args.queue_max,
    )
    gate = Gate(
        model.eval(),
        tok,
        max_length=args.max_length,
        thresholds=Thresholds(refuse_at=0.0, allow_at=1.0),
        model_version=f"{args.model}+fresh-adapter",
        **gate_options(cfg),
    )
    if args.delay_ms > 0:
        gate.batch_hook = lambda: time.sleep(args.delay_ms / 1000)
    svc = build_service(cfg, gate=gate)
    return serve_in_thread(create_app(svc, start_worker=False)), svc


def classify(resp) -> str:
    if resp is None:
        return "http errors"
    if resp.status_code == 503:
        return "503"
    if resp.status_code != 200:
        return "http errors"
    status = resp.json()["so8t"]["status"]
    return {"ok": "ok", "timeout": "own timeout"}.get(status, "by others")


def run_level(url: str, concurrency: int, n: int, deadline: float, client_timeout_s: float) -> dict:
    import httpx

    counts = dict.fromkeys(COLUMNS, 0)
    latencies: list[float] = []
    reasons: list[str] = []
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=client_timeout_s, limits=limits) as client:

        def one(k: int) -> None:
            if time.monotonic() > deadline:
                kind, took = "skipped", None
            else:
                t0 = time.perf_counter()
                try:
                    resp = client.post(
                        f"{url}/v1/chat/completions",
                        headers={"X-So8t-User": f"load-{k}"},
                        json={"messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}]},
                    )
                except httpx.HTTPError:
                    resp = None
                took = time.perf_counter() - t0
                kind = classify(resp)
                if kind == "by others":
                    reasons.append(resp.json()["so8t"]["decision"]["reason"])
            with lock:
                counts[kind] += 1
                if kind in ("ok", "own timeout"):
                    latencies.append(took * 1000)

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(n)))
    return {"counts": counts, "latencies": latencies, "reasons": reasons}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (a random tiny Llama), 'embedded', or a model folder")
    ap.add_argument("--requests", type=int, default=240, help="requests per concurrency level (at least one each)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 120])
    ap.add_argument("--delay-ms", type=float, default=40.0, help="sleep before each scoring batch (Gate.batch_hook)")
    ap.add_argument("--gate-timeout-s", type=float, default=1.0)
    ap.add_argument("--queue-max", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--time-limit-s", type=float, default=300.0, help="the whole run stops sending after this")
    args = ap.parse_args()

    started = time.monotonic()
    deadline = started + args.time_limit_s
    with tempfile.TemporaryDirectory(prefix="so8t-gate-load-") as tmp:
        handle, svc = start_server(args, Path(tmp))
        try:
            client_timeout = args.gate_timeout_s + 60
            run_level(handle.url, 1, 2, deadline, client_timeout)  # warm-up
            rows = {
                c: run_level(handle.url, c, max(args.requests, c), deadline, client_timeout) for c in args.concurrency
            }
        finally:
            handle.stop()
            svc.close()

    print(
        f"\nmodel {args.model}, delay {args.delay_ms:g} ms per batch, gate timeout {args.gate_timeout_s:g} s, "
        f"queue max {args.queue_max}, {time.monotonic() - started:.0f} s in all"
    )
    print(
        f"{'clients':>8}{'sent':>6}"
        + "".join(f"{c:>13}" for c in COLUMNS)
        + f"{'p50 ms':>9}{'p95 ms':>9}{'p50 x c1':>10}"
    )
    base = None
    for c, row in rows.items():
        n, lat = row["counts"], row["latencies"]
        p50, p95 = pct(lat, 50), pct(lat, 95)
        base = base if base is not None else p50
        print(
            f"{c:>8}{sum(n.values()) - n['skipped']:>6}"
            + "".join(f"{n[k]:>13}" for k in COLUMNS)
            + f"{p50:>9.1f}{p95:>9.1f}{p50 / base:>10.2f}"
        )
    others = sum(row["counts"]["by others"] for row in rows.values())
    for c, row in rows.items():
        for reason in sorted(set(row["reasons"]))[:3]:
            print(f"  {c} clients, failed closed by others: {reason}")
    print(f"failed closed because of another request: {others}  target 0  {'PASS' if others == 0 else 'FAIL'}")
    return 1 if others else 0


if __name__ == "__main__":
    sys.exit(main())
