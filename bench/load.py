"""A bounded load test of `so8t serve` on loopback, gate batching off and on, side by side in one run.

For each setting it starts the real server (`python -m so8t serve RUN` in its own process, on a
free 127.0.0.1 port, with a throwaway approvals database and audit log), waits for /readyz, and
for each concurrency (1, 4 and 16 by default) sends a fixed number of requests from that many
clients at once, printing

- throughput (answered requests per second) and p50 / p95 / p99 latency of the answered ones;
- errors: anything but a 200 carrying a decision with status "ok" (503s, timeouts, 5xx);
- the server's resident memory (VmRSS) before and after the level;
- the mean number of requests per forward pass of the gate (from /metrics).

It stops by itself: every level has a fixed number of requests, and --time-limit-s bounds the
whole run (requests not sent by then are counted as skipped). The summary compares batching on
against the issue's targets: throughput at 16 clients >= 3x one client, p95 at 4 clients < 2x the
one-client p50, no errors, RSS flat (<= 5% growth over the levels).

    .venv/bin/python bench/load.py --run runs/cpu-quick            # a trained run (its thresholds)
    .venv/bin/python bench/load.py --model tiny --requests 16      # a random tiny Llama, seconds
        [--concurrency 1 4 16] [--requests 96] [--route gate|chat|mixed] [--window-ms 5]
        [--batch-max 16] [--time-limit-s 900] [--set KEY=VALUE ...]

--model (tiny, embedded, embedded:gemma3-270m or a model folder) serves an untrained run built in
a temporary folder (a fresh adapter and head: load does not depend on what the weights learned;
its start-up self-test is off). Requests are the built-in test split's prompts, in order.
--route gate posts /v1/gate (the decision only); chat posts /v1/chat/completions, where an
allowed request generates one token (max_tokens=1) and an escalated one queues an approval.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SETTINGS = {"off": ["gate_batching=false"], "on": ["gate_batching=true"]}


def untrained_run(model: str, folder: Path, max_length: int) -> Path:
    """A complete run folder around `model` with a fresh adapter and head (thresholds: argmax)."""
    import json

    from so8t.config import TrainConfig, save_yaml
    from so8t.model import RUN_MARKER, save_artifacts
    from so8t.train.recipe import CONFIG_FILE, build_model

    if model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gate_load import tiny_model

        model = str(tiny_model(folder / "tiny-base"))
    cfg = TrainConfig(model=model, max_length=max_length, amp="none")
    net, tok, fp = build_model(cfg)
    run = folder / "run"
    save_artifacts(
        run, net, tok, {"base_model": model, "base_fingerprint": fp, "max_length": max_length, "amp": cfg.amp}
    )
    save_yaml(cfg, run / CONFIG_FILE)
    (run / RUN_MARKER).write_text(json.dumps({"status": "complete", "note": "untrained, for bench/load.py"}))
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`python -m so8t serve RUN` in its own process group; its log goes to a file."""

    def __init__(self, run: Path, state: Path, sets: list[str], startup_s: float):
        import so8t

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state / "server.log"
        env = dict(os.environ)
        src = str(Path(so8t.__file__).resolve().parents[1])  # the same so8t as this script
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [
            sys.executable,
            "-m",
            "so8t",
            "serve",
            str(run),
            "--port",
            str(self.port),
            "--set",
            f"approvals_url=sqlite:///{state}/approvals.db",
            "--set",
            f"audit_path={state}/audit.jsonl",
        ]
        for item in sets:
            cmd += ["--set", item]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_ready(startup_s)

    def _wait_ready(self, startup_s: float) -> None:
        deadline = time.monotonic() + startup_s
        body = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=5)
                if r.status_code == 200:
                    return
                body = r.text
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        tail = self.log.read_text(errors="replace")[-3000:]
        raise SystemExit(
            f"bench/load.py: the server did not become ready within {startup_s:g} s "
            f"(/readyz: {body})\n--- server log ---\n{tail}"
        )

    @property
    def rss(self) -> float:
        return rss_mib(self.proc.pid)

    def batch_sizes(self) -> dict[int, int]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {int(n): int(c) for n, c in re.findall(r'so8t_gate_batches_total\{requests="(\d+)"\} (\d+)', text)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def request(client: httpx.Client, url: str, route: str, messages: list[dict], k: int) -> bool:
    """One request; True when it was answered with a decision of status "ok"."""
    body = {"messages": messages}
    chat = route == "chat" or (route == "mixed" and k % 2)
    try:
        if chat:
            r = client.post(f"{url}/v1/chat/completions", json=body, headers={"X-So8t-User": f"load-{k}"})
            return r.status_code == 200 and r.json()["so8t"]["status"] == "ok"
        r = client.post(f"{url}/v1/gate", json=body)
        return r.status_code == 200 and r.json()["status"] == "ok"
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def run_level(server: Server, route: str, prompts: list, clients: int, n: int, deadline: float) -> dict:
    """n requests from `clients` concurrent clients; latencies of the answered ones."""
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "skipped": 0}
    lock = threading.Lock()
    rss_before, sizes_before = server.rss, server.batch_sizes()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(timeout=120, limits=limits) as client:

        def one(k: int) -> None:
            if time.monotonic() > deadline:
                with lock:
                    counts["skipped"] += 1
                return
            t0 = time.perf_counter()
            ok = request(client, server.url, route, prompts[k % len(prompts)], k)
            took = (time.perf_counter() - t0) * 1000
            with lock:
                counts["ok" if ok else "errors"] += 1
                if ok:
                    latencies.append(took)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    after = server.batch_sizes()
    rounds = {s: after.get(s, 0) - sizes_before.get(s, 0) for s in after}
    scored = sum(s * c for s, c in rounds.items())
    return {
        "clients": clients,
        **counts,
        "wall": wall,
        "throughput": counts["ok"] / wall if wall else 0.0,
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
        "p99": pct(latencies, 99),
        "rss_before": rss_before,
        "rss_after": server.rss,
        "mean_batch": scored / sum(rounds.values()) if sum(rounds.values()) else float("nan"),
    }


def pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def print_table(rows: dict[str, list[dict]]) -> None:
    head = (
        f"{'batching':>8}{'clients':>8}{'ok':>6}{'errors':>7}{'skipped':>8}{'req/s':>8}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'rss MiB before':>15}{'after':>8}{'mean batch':>11}"
    )
    print(head)
    for setting, levels in rows.items():
        for r in levels:
            print(
                f"{setting:>8}{r['clients']:>8}{r['ok']:>6}{r['errors']:>7}{r['skipped']:>8}{r['throughput']:>8.2f}"
                f"{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}{r['rss_before']:>15.0f}{r['rss_after']:>8.0f}"
                f"{r['mean_batch']:>11.2f}"
            )


def summary(setting: str, levels: list[dict]) -> list[str]:
    """The issue's targets for one setting (levels that were not run are left out)."""
    by = {r["clients"]: r for r in levels}
    out = []
    if 1 in by and 16 in by and by[1]["throughput"]:
        ratio = by[16]["throughput"] / by[1]["throughput"]
        out.append(f"throughput 16 clients / 1 client: {ratio:.2f}  target >= 3  {'PASS' if ratio >= 3 else 'MISS'}")
    if 1 in by and 4 in by and by[1]["p50"] == by[1]["p50"]:
        ratio = by[4]["p95"] / by[1]["p50"]
        out.append(f"p95 at 4 clients / p50 at 1 client: {ratio:.2f}  target < 2  {'PASS' if ratio < 2 else 'MISS'}")
    errors = sum(r["errors"] + r["skipped"] for r in levels)
    out.append(f"errors and skipped requests: {errors}  target 0  {'PASS' if errors == 0 else 'MISS'}")
    grow = levels[-1]["rss_after"] - levels[0]["rss_before"]
    flat = grow <= 0.05 * levels[0]["rss_before"]
    out.append(f"server RSS growth over the levels: {grow:+.0f} MiB  target <= 5%  {'PASS' if flat else 'MISS'}")
    return [f"batching {setting}: {line}" for line in out]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--run", help="a trained run folder, served as it is")
    which.add_argument(
        "--model",
        default="tiny",
        help="serve an untrained run of this model: tiny (default), embedded, embedded:gemma3-270m or a model folder",
    )
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--route", choices=["gate", "chat", "mixed"], default="gate")
    ap.add_argument("--window-ms", type=float, default=5.0, help="gate_batch_window_ms when batching is on")
    ap.add_argument("--batch-max", type=int, default=16, help="gate_batch_max")
    ap.add_argument("--max-length", type=int, default=192, help="max_length of an untrained run (--model)")
    ap.add_argument("--time-limit-s", type=float, default=900.0, help="the whole run stops sending after this")
    ap.add_argument("--startup-s", type=float, default=600.0, help="how long a server may take to become ready")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more server config overrides")
    args = ap.parse_args()
    if args.requests < 1 or any(c < 1 for c in args.concurrency):
        ap.error("--requests and every --concurrency must be >= 1")

    from so8t.data import load_builtin

    prompts = [r.messages() for r in load_builtin("test")]
    started = time.monotonic()
    deadline = started + args.time_limit_s
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="so8t-load-") as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else untrained_run(args.model, tmp, args.max_length)
        common = [
            "max_tokens=1",
            f"gate_batch_window_ms={args.window_ms}",
            f"gate_batch_max={args.batch_max}",
            f"gate_queue_max={max(32, 2 * max(args.concurrency))}",
        ]
        common += [] if args.run else ["self_test=false"]
        for setting, sets in SETTINGS.items():
            state = tmp / f"state-{setting}"
            state.mkdir()
            server = Server(run, state, common + sets + args.set, args.startup_s)
            try:
                run_level(server, args.route, prompts, 2, 4, deadline)  # warm-up, not counted
                rows[setting] = [
                    run_level(server, args.route, prompts, c, args.requests, deadline) for c in args.concurrency
                ]
            finally:
                server.stop()
            print(f"batching {setting}: done ({time.monotonic() - started:.0f} s)", flush=True)

    what = f"run {args.run}" if args.run else f"untrained run of {args.model}"
    print(
        f"\n{what}, route {args.route}, {args.requests} requests per level, window {args.window_ms:g} ms, "
        f"batch max {args.batch_max}, {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s in all"
    )
    print_table(rows)
    for setting, levels in rows.items():
        for line in summary(setting, levels):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
