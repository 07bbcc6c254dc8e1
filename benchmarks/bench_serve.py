"""`setdpo serve` under load: contexts/s and latency with 1, 8 and 32 concurrent clients,
batched against ``--max-batch 1``, in one run.

Trains a lab run for two steps on ML-100K `next` (20 candidates, listing prompt; the speed
of a lab model does not depend on its training), starts ``python -m setdpo serve RUN`` on a
free 127.0.0.1 port for each server setting (both at once; they take turns, in alternating
order, at each client count, so that the shared machine's changing load hits both alike), and
for each client count sends ``--requests-per-client`` `/v1/rank` requests per client (test
contexts in turn) from an asyncio httpx client, each client waiting for its answer before the
next request. Reports contexts/s, p50/p95/p99 latency and the server's mean batch size, and
the same scoring in-process without HTTP (one context per call against many), then writes the
section ``## Serving (bench_serve.py)`` of RESULTS.md.

    .venv/bin/python benchmarks/bench_serve.py --clients 1 8 32

``--model smollm2`` serves the embedded SmolLM2-135M (a two-step LoRA SFT run of it) instead.

``--defaults`` checks instead one server at `ServeConfig`'s default limits (batch, window,
queue, timeout), serving the run's `setdpo export`: a burst of the largest client count on the
cold server (its first requests: admission control knows only the start-up warm-up's time),
then, after the warm-up, a burst at each client count. Per burst: the answers by status (200; 503 with ``Retry-After``; any other,
504 included), the slowest 503, the `/health` counters the burst added, and how much
``scored`` still grew ``--settle-s`` seconds after every client was answered (0: no work for
anyone gone). Issue 29's criterion: 200 or a 503 with ``Retry-After`` within 1 s, no 504, no
work after. Writes ``## Serving ... at the default settings``:

    .venv/bin/python benchmarks/bench_serve.py --model smollm2 --defaults --clients 1 8 32 \
        --requests-per-client 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from results_md import write_section

from setdpo import cli
from setdpo.data import PrepareConfig, load_split, prepare

SECTIONS = {"lab": "## Serving (bench_serve.py)",
            "smollm2": "## Serving SmolLM2 (bench_serve.py --model smollm2)"}  # fmt: skip
MODELS = {"lab": "lab model (5.5M-parameter Llama, full fine-tuning run)",
          "smollm2": "SmolLM2-135M (embedded, LoRA run, float32)"}  # fmt: skip
DEFAULTS_SECTIONS = {"lab": "## Serving at the default settings (bench_serve.py --defaults)",
                     "smollm2": "## Serving SmolLM2 at the default settings "
                     "(bench_serve.py --model smollm2 --defaults)"}  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_run(root: Path, model: str, contexts: int) -> tuple[Path, list[dict]]:
    """A short SFT run of ``model`` on a small ML-100K `next` directory, and the request
    bodies of its test contexts."""
    data = prepare(
        PrepareConfig(
            source="ml-100k",
            mode="next",
            candidates=20,
            seed=0,
            out=str(root / "data"),
            max_examples_per_split={"train": 200, "valid": 8, "test": contexts},
        )
    )
    run = root / "run"
    name = "lab" if model == "lab" else "embedded:smollm2-135m"
    peft = ["--peft", "none"] if model == "lab" else []
    argv = ["train", "sft", "--data", str(data), "--model", name, "--out", str(run), *peft]
    argv += ["--max-steps", "2", "--per-device-train-batch-size", "1", "--disable-tqdm", "true"]
    argv += ["--max-eval-examples", "2"]
    if cli.main(argv) != 0:
        raise SystemExit("training the benchmark run failed")
    bodies = [
        {"history": ex.history, "candidates": ex.candidates} for ex in load_split(data, "test")
    ]
    return run, bodies


class Server:
    def __init__(self, run: Path, options: list[str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        argv = [sys.executable, "-m", "setdpo", "serve", str(run), "--threads", "1"]
        argv += ["--port", self.url.rsplit(":", 1)[1], *options]
        self.log = open(log, "w")  # noqa: SIM115
        self.process = subprocess.Popen(argv, env=ENV, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)
        raise SystemExit("the server did not start within 300 s")

    def stats(self, key: str = "batches") -> dict:
        return httpx.get(self.url + "/v1/model").json()[key]

    def health(self) -> dict[str, int]:
        return httpx.get(self.url + "/health").json()["requests"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a batch still scoring: no need to wait for it
            self.process.kill()
            self.process.wait()
        self.log.close()


async def load_test(url: str, bodies: list[dict], clients: int, per_client: int) -> dict:
    """``clients`` closed-loop clients, ``per_client`` requests each: latencies (ms),
    wall seconds, failed requests, and each answer's (status, ms, whether Retry-After came)."""
    latencies: list[float] = []
    answers: list[tuple[int, float, bool]] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        for k in range(per_client):
            body = bodies[(index * per_client + k) % len(bodies)]
            start = time.perf_counter()
            response = await http.post("/v1/rank", json=body)
            latencies.append(1000 * (time.perf_counter() - start))
            answers.append((response.status_code, latencies[-1], "retry-after" in response.headers))
            failures += response.status_code != 200

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        seconds = time.perf_counter() - start
    return {"latencies": latencies, "seconds": seconds, "failures": failures, "answers": answers}


def measure(run: Path, bodies: list[dict], settings: dict[str, list[str]], clients: list[int],
            per_client: int, turns: int, logs: Path) -> dict:  # fmt: skip
    """``{(setting, clients): row}``. Every server runs at once (an idle one costs nothing)
    and the settings take turns at each client count, in alternating order (``turns`` 2:
    A B B A, ``per_client / 2`` requests a turn), so that a drift in the machine's load hits
    both alike."""
    servers = {}
    try:
        for i, (name, options) in enumerate(settings.items()):
            servers[name] = Server(run, options, logs / f"server-{i}.log")
            asyncio.run(load_test(servers[name].url, bodies, 2, 4))  # warm-up
        rows = {}
        for index, n in enumerate(clients):
            order = list(settings)[:: 1 if index % 2 == 0 else -1]
            order = order + order[::-1] if turns == 2 else order
            parts: dict[str, list[dict]] = {name: [] for name in settings}
            for name in order:
                parts[name].append(_measure_one(servers[name], bodies, n, per_client // turns))
            for name, measured in parts.items():
                rows[name, n] = _summary(measured)
                print(name, n, {k: round(float(v), 2) for k, v in rows[name, n].items()},
                      flush=True)  # fmt: skip
        return rows
    finally:
        for server in servers.values():
            server.stop()


def _measure_one(server: Server, bodies: list[dict], clients: int, per_client: int) -> dict:
    before = server.stats()
    part = asyncio.run(load_test(server.url, bodies, clients, max(per_client, 1)))
    after = server.stats()
    part["batches"] = after["batches"] - before["batches"]
    part["scored"] = after["requests"] - before["requests"]
    return part


def _summary(parts: list[dict]) -> dict:
    latencies = [x for part in parts for x in part["latencies"]]
    seconds = sum(part["seconds"] for part in parts)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    batches = max(sum(part["batches"] for part in parts), 1)
    return {"contexts_per_s": len(latencies) / seconds, "p50": p50, "p95": p95, "p99": p99,
            "requests": len(latencies), "failures": sum(part["failures"] for part in parts),
            "seconds": seconds,
            "mean_batch": sum(part["scored"] for part in parts) / batches}  # fmt: skip


def at_defaults(server: Server, bodies: list[dict], clients: list[int], per_client: int,
                settle_s: float) -> dict:  # fmt: skip
    """``{(state, clients): row}`` of `_burst` on one server: ``max(clients)`` while it is
    cold, then the warm-up, then each client count."""
    rows = {("cold", max(clients)): _burst(server, bodies, max(clients), per_client, settle_s)}
    asyncio.run(load_test(server.url, bodies, 2, 4))  # warm-up, as in `measure`
    for n in clients:
        rows["warm", n] = _burst(server, bodies, n, per_client, settle_s)
    return rows


def _burst(server: Server, bodies: list[dict], clients: int, per_client: int,
           settle_s: float) -> dict:  # fmt: skip
    """The answers of one `load_test` by status, the slowest 503 (ms), the `/health` counters
    it added, and what ``scored`` added after its last answer: by ``settle_s`` seconds later,
    or once the server is idle (nothing queued or scoring) if that is later."""
    before = server.health()
    answers = asyncio.run(load_test(server.url, bodies, clients, per_client))["answers"]
    after = server.health()
    time.sleep(settle_s)
    while (idle := server.health())["queued"] or idle["scoring"]:
        time.sleep(1)
    refused = [ms for status, ms, retry in answers if status == 503 and retry]
    ok = [ms for status, ms, _ in answers if status == 200]
    other = [
        status for status, _, retry in answers if status != 200 and (status, retry) != (503, True)
    ]
    row = {"ok": len(ok), "unavailable": len(refused), "other": other,
           "max_ok_ms": max(ok, default=0.0), "max_503_ms": max(refused, default=0.0),
           "after": idle["scored"] - after["scored"]}  # fmt: skip
    row |= {key: idle[key] - before[key] for key in ("scored", "dropped", "refused")}  # /health
    row["held"] = not other and row["max_503_ms"] < 1000 and not row["after"]
    print(clients, row, flush=True)
    return row


def scoring_only(run: Path, bodies: list[dict], batch: int) -> dict[int, float]:
    """Contexts/s of `RankingService.score` in this process, no HTTP: one context per call
    against ``batch`` (at most the contexts there are) per call (what batching can gain at
    best on this machine)."""
    from setdpo.serving.service import RankingService, ServeConfig

    service = RankingService(ServeConfig(model=str(run), device="cpu"))
    jobs = [service.rank_job(b["history"], b["candidates"]) for b in bodies[:batch]]
    service.score(jobs[:1])  # warm-up
    out = {}
    for size in (1, len(jobs)):
        start = time.perf_counter()
        for i in range(0, len(jobs), size):
            service.score(jobs[i : i + size])
        out[size] = len(jobs) / (time.perf_counter() - start)
    return out


def markdown(section: str, rows: dict, settings: dict, clients: list[int], setup: str,
             command: str, alone: dict[int, float]) -> str:  # fmt: skip
    lines = [section, "", f"Command: `{command}`", "", setup, ""]
    lines += ["| server | clients | contexts/s | p50 ms | p95 ms | p99 ms | mean batch | failed |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in settings:
        for n in clients:
            r = rows[name, n]
            lines.append(
                f"| {name} | {n} | {r['contexts_per_s']:.3g} | {r['p50']:.0f} | {r['p95']:.0f} "
                f"| {r['p99']:.0f} | {r['mean_batch']:.1f} | {r['failures']} |"
            )
    batched, single = list(settings)
    lines += ["", "Batched / unbatched throughput: " + ", ".join(
        f"{n} clients {rows[batched, n]['contexts_per_s'] / rows[single, n]['contexts_per_s']:.2f}x"
        for n in clients) + "."]  # fmt: skip
    many, (one_rate, many_rate) = max(alone), alone.values()
    lines += ["", f"Scoring alone (`RankingService.score` in-process, no HTTP, same contexts): "
              f"{one_rate:.1f} contexts/s one context per call, {many_rate:.1f} contexts/s "
              f"{many} per call ({many_rate / one_rate:.2f}x)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def markdown_defaults(section: str, rows: dict, setup: str, command: str, settle_s: float) -> str:
    lines = [section, "", f"Command: `{command}`", "", setup, ""]
    lines += ["| server | clients | 200 | 503 + Retry-After | other (504, ...) | slowest 200 ms "
              "| slowest 503 ms | scored | dropped | refused | scored after | criterion |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (state, n), r in rows.items():
        other = f"{len(r['other'])} ({', '.join(map(str, sorted(set(r['other']))))})" \
            if r["other"] else "0"  # fmt: skip
        lines.append(
            f"| {state} | {n} | {r['ok']} | {r['unavailable']} | {other} | {r['max_ok_ms']:.0f} "
            f"| {r['max_503_ms']:.0f} | {r['scored']} | {r['dropped']} | {r['refused']} "
            f"| {r['after']} | {'held' if r['held'] else 'FAILED'} |"
        )
    lines += ["", "scored, dropped, refused: what the burst added to `/health`'s counters; scored "
              f"after: what `scored` added after the last answer ({settle_s:g} s later, or once "
              "nothing was queued or scoring). The "
              "criterion (issue 29): every request 200, or 503 with `Retry-After` within 1 s; "
              "no 504; no work after the clients are answered."]  # fmt: skip
    return "\n".join(lines) + "\n"


def describe(served: str, per_client: int) -> str:
    return (
        f"{served}; `/v1/rank` requests of ML-100K test contexts (`next`, 20 candidates, "
        f"listing prompt), {per_client} requests per closed-loop client (asyncio httpx, same "
        f"machine); server: 1 torch thread, CPU; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with "
        f"the client and other jobs (load average {os.getloadavg()[0]:.1f} at the end)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["lab", "smollm2"], default="lab")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=32, help="the batched server's")
    parser.add_argument("--window-ms", type=float, default=5.0, help="the batched server's")
    parser.add_argument("--contexts", type=int, default=50, help="test contexts cycled through")
    parser.add_argument(
        "--alone-contexts",
        type=int,
        default=32,
        help="contexts of the in-process scoring line (one call, then singly)",
    )
    parser.add_argument(
        "--turns",
        type=int,
        choices=[1, 2],
        default=2,
        help="2: each setting measured twice per client count, A B B A",
    )
    parser.add_argument("--timeout-s", type=float, default=600, help="the servers' request timeout")
    parser.add_argument("--defaults", action="store_true",
                        help="one server at the default limits, serving the export: issue 29's "
                        "criterion (the options above but --clients, --requests-per-client and "
                        "--contexts are unused)")  # fmt: skip
    parser.add_argument("--settle-s", type=float, default=10, help="--defaults: the wait "
                        "after a burst (then until the server is idle) before checking that "
                        "scored no longer grew")  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.defaults:
        return check_defaults(args)
    common = ["--timeout-s", str(args.timeout_s), "--max-queue", "1024"]
    settings = {
        f"batched (max batch {args.max_batch}, window {args.window_ms:g} ms)": [
            "--max-batch", str(args.max_batch), "--batch-window-ms", str(args.window_ms), *common],
        "unbatched (max batch 1)": ["--max-batch", "1", *common],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run, bodies = make_run(Path(tmp), args.model, args.contexts)
        rows = measure(run, bodies, settings, args.clients, args.requests_per_client,
                       args.turns, Path(tmp))  # fmt: skip
        alone = scoring_only(run, bodies, min(args.max_batch, args.alone_contexts))
    command = (
        f".venv/bin/python benchmarks/bench_serve.py --model {args.model} --clients "
        f"{' '.join(map(str, args.clients))} --requests-per-client {args.requests_per_client} "
        f"--max-batch {args.max_batch} --window-ms {args.window_ms:g} --contexts {args.contexts} "
        f"--alone-contexts {args.alone_contexts} --timeout-s {args.timeout_s:g} --turns {args.turns}"
    )
    setup = describe(MODELS[args.model], args.requests_per_client)
    section = SECTIONS[args.model]
    text = markdown(section, rows, settings, args.clients, setup, command, alone)
    print(text)
    if not args.no_write:
        write_section(section, text)


def check_defaults(args: argparse.Namespace) -> None:
    """``--defaults``: `at_defaults` on the export of the run, the section written."""
    with tempfile.TemporaryDirectory() as tmp:
        run, bodies = make_run(Path(tmp), args.model, args.contexts)
        export = Path(tmp) / "export"
        if cli.main(["export", str(run), "--out", str(export)]) != 0:
            raise SystemExit("exporting the benchmark run failed")
        server = Server(export, [], Path(tmp) / "server.log")
        try:
            limits = server.stats("limits")
            rows = at_defaults(server, bodies, args.clients, args.requests_per_client,
                               args.settle_s)  # fmt: skip
        finally:
            server.stop()
    command = (
        f".venv/bin/python benchmarks/bench_serve.py --model {args.model} --defaults --clients "
        f"{' '.join(map(str, args.clients))} --requests-per-client {args.requests_per_client} "
        f"--contexts {args.contexts} --settle-s {args.settle_s:g}"
    )
    served = (
        f"{MODELS[args.model]}, its `setdpo export` served at the default limits (max batch "
        f"{limits['max_batch']}, window {limits['batch_window_ms']:g} ms, queue "
        f"{limits['max_queue']}, timeout {limits['timeout_s']:g} s; cold: the server's first "
        f"requests, warm: after a warm-up of 2 clients x 4 requests)"
    )
    setup = describe(served, args.requests_per_client)
    section = DEFAULTS_SECTIONS[args.model]
    text = markdown_defaults(section, rows, setup, command, args.settle_s)
    print(text)
    if not args.no_write:
        write_section(section, text)


if __name__ == "__main__":
    main()
