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

    def stats(self) -> dict:
        return httpx.get(self.url + "/v1/model").json()["batches"]

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
    wall seconds, failed requests."""
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        for k in range(per_client):
            body = bodies[(index * per_client + k) % len(bodies)]
            start = time.perf_counter()
            response = await http.post("/v1/rank", json=body)
            latencies.append(1000 * (time.perf_counter() - start))
            failures += response.status_code != 200

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        seconds = time.perf_counter() - start
    return {"latencies": latencies, "seconds": seconds, "failures": failures}


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
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
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
    model = "lab model (5.5M-parameter Llama, full fine-tuning run)" if args.model == "lab" \
        else "SmolLM2-135M (embedded, LoRA run, float32)"  # fmt: skip
    setup = (
        f"{model}; `/v1/rank` requests of ML-100K test contexts (`next`, 20 candidates, "
        f"listing prompt), {args.requests_per_client} requests per closed-loop client (asyncio "
        f"httpx, same machine); server: 1 torch thread, CPU; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with "
        f"the client and other jobs (load average {os.getloadavg()[0]:.1f} at the end)."
    )
    section = SECTIONS[args.model]
    text = markdown(section, rows, settings, args.clients, setup, command, alone)
    print(text)
    if not args.no_write:
        write_section(section, text)


if __name__ == "__main__":
    main()
