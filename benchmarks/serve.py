"""Serving throughput and latency of `moses serve` (a real server in its own process, called with the official
`openai` client from client threads): tokens per second and p50 / p95 request latency at several numbers of
concurrent clients and answer lengths, with the requests spread over the run's tasks (mixed) against the same
prompts all sent to the first task (single: so the two differ only in the tasks, not in prompt lengths), and
against the same prompts sent one request at a time (sequential). The modes take turns for several rounds; each
ratio is the median over rounds of the ratio within a round. The answer length is a shape of its own: batching
shares the decoding steps, not the prefill, so the short answers of TRACE's label tasks gain least from it.

    python benchmarks/serve.py --source runs/trace-proxy/moses [--clients 1,4,16] [--max-tokens 16,64]

Issue 14's targets: at 16 clients, mixed-task throughput >= 0.8x single-task and >= 3x one-at-a-time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import free_port, write_results


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not come up")


def prompts_of(source: Path, per_task: int, stream_config=None) -> dict[str, list[str]]:
    """Each task's first test prompts, from the run's own config or, for an adapter directory, `stream_config`
    (a RunConfig)."""
    from moses.runner.run import build_stream, read_config

    config = stream_config or read_config(source)
    return {task.name: [e["prompt"] for e in task.test[:per_task]] for task in build_stream(config)}


def untrained_adapter(model_name: str, tasks: list[str], output: Path) -> Path:
    """A MoSEs adapter (package defaults) on `model_name` with one ended task per name, saved to `output`:
    untrained, it does the same computation as a trained one, so it serves throughput measurements where no
    trained run is at hand (its answers are the base model's)."""
    from moses import MoSEsConfig, get_moses_model
    from moses.models import load_model

    model = get_moses_model(load_model(model_name)[0], MoSEsConfig())
    for task in tasks:
        model.add_task(task)
        model.end_task()
    model.save_pretrained(output)
    return output


def batch_totals(url: str) -> tuple[float, float]:
    """(batches, requests in them) so far, from the server's /metrics (the moses_batch_size histogram)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    values = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("moses_batch_size_")}
    return values.get("moses_batch_size_count", 0.0), values.get("moses_batch_size_sum", 0.0)


def one_mode(client, url: str, jobs: list[tuple[str, str]], clients: int, max_tokens: int) -> dict:
    """`jobs` (task, prompt) sent by `clients` threads, each one request at a time."""
    latencies, tokens = [], []
    batches_before, requests_before = batch_totals(url)

    def send(job: tuple[str, str]) -> None:
        began = time.perf_counter()
        reply = client.completions.create(model=job[0], prompt=job[1], max_tokens=max_tokens, temperature=0,
                                          extra_body={"ignore_eos": True})  # every answer max_tokens long
        latencies.append(time.perf_counter() - began)
        tokens.append(reply.usage.completion_tokens)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, jobs))
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    batches_after, requests_after = batch_totals(url)
    batches, requests = batches_after - batches_before, requests_after - requests_before
    return {"wall_s": wall, "tokens": sum(tokens), "tokens_per_s": sum(tokens) / wall,
            "p50_s": statistics.median(ordered), "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "mean_batch": requests / max(batches, 1)}


def main() -> None:
    import openai

    parser = argparse.ArgumentParser()
    parser.add_argument("--source", help="a MoSEs run directory with several tasks, or an adapter directory")
    parser.add_argument("--stream-config", type=Path, help="where the prompts come from when --source is an adapter "
                        "(e.g. benchmarks/trace_proxy.yaml); without --source, an untrained adapter of its tasks "
                        "is made in runs/serve-adapter")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", default="16,64", help="answer lengths (tokens), comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--name", default="serve", help="results go to benchmarks/results/<name>.json and .md")
    parser.add_argument("--batch-window-ms", type=float, help="the server's batching window (default: its own)")
    args = parser.parse_args()
    if args.source is None and args.stream_config is None:
        raise SystemExit("serve.py: give --source RUN_OR_ADAPTER or --stream-config FILE")
    from moses.runner.config import RunConfig

    stream = RunConfig.from_file(args.stream_config) if args.stream_config else None
    levels = [int(c) for c in args.clients.split(",")]
    lengths = [int(n) for n in args.max_tokens.split(",")]
    prompts = prompts_of(Path(args.source or "."), max(levels) * args.requests, stream)
    tasks = list(prompts)
    source = Path(args.source) if args.source else untrained_adapter(stream.model, tasks, Path("runs/serve-adapter"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moses.cli", "serve", str(source), "--port", str(port),
                               "--precision", args.precision, "--log-level", "warning",
                               "--queue-limit", str(4 * max(levels))]
                              + (["--batch-window-ms", str(args.batch_window_ms)] if args.batch_window_ms else [])
                              + (["--model", stream.model] if stream else []))
    try:
        wait_until_up(url, server)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        client.completions.create(model=tasks[0], prompt=prompts[tasks[0]][0], max_tokens=2, temperature=0)  # warm
        modes = []  # (mode, clients, jobs, threads): the same jobs at every answer length and round
        for clients in levels:
            mixed = [(tasks[i % len(tasks)], prompts[tasks[i % len(tasks)]][i // len(tasks)])
                     for i in range(clients * args.requests)]
            single = [(tasks[0], prompt) for _, prompt in mixed]  # the same prompts, all to one task
            modes += [("mixed", clients, mixed, clients), ("single", clients, single, clients)]
            if clients > 1:  # one at a time is the same as mixed at 1 client
                modes.append(("sequential", clients, mixed, 1))
        rounds = []
        for round_index in range(args.rounds):
            measured = {}
            for length in lengths:
                for mode, clients, jobs, threads in modes:
                    measured[f"{mode} {clients} {length}"] = result = one_mode(client, url, jobs, threads, length)
                    print(f"round {round_index + 1}/{args.rounds} {mode} x{clients}, {length} tokens: "
                          f"{result['tokens_per_s']:.1f} tokens/s, p50 {result['p50_s']:.2f}s, p95 "
                          f"{result['p95_s']:.2f}s, mean batch {result['mean_batch']:.1f}", file=sys.stderr,
                          flush=True)
            rounds.append(measured)
    finally:
        server.terminate()
        server.wait(timeout=60)

    def median(key: str, field: str) -> float:
        return statistics.median(r[key][field] for r in rounds)

    def ratio(key: str, against: str) -> float:
        return statistics.median(r[key]["tokens_per_s"] / r[against]["tokens_per_s"] for r in rounds)

    rows = []
    for key in rounds[0]:
        mode, clients, length = key.split()
        row = {"answer tokens": int(length), "mode": mode, "clients": int(clients),
               "requests": int(clients) * args.requests, "tokens/s": round(median(key, "tokens_per_s"), 1),
               "p50 s": round(median(key, "p50_s"), 2), "p95 s": round(median(key, "p95_s"), 2),
               "mean batch": round(median(key, "mean_batch"), 1)}
        if mode == "mixed":
            row["mixed / single"] = round(ratio(key, f"single {clients} {length}"), 3)
            if f"sequential {clients} {length}" in rounds[0]:
                row["mixed / one at a time"] = round(ratio(key, f"sequential {clients} {length}"), 3)
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_results(args.name, {"source": str(source), "tasks": tasks, "max_tokens": lengths,
                            "requests_per_client": args.requests, "rounds": rounds}, rows, columns,
                  notes=("An untrained adapter of the tasks (the same computation as a trained one; the answers "
                         "are the base model's). " if args.source is None else "")
                  + f"`moses serve {source}` in its own process on this machine's {os.cpu_count()} CPU cores "
                  f"({args.precision} precision; {args.rounds} round{'s' if args.rounds > 1 else ''}), the "
                  f"official openai client in threads; greedy completions of exactly "
                  f"{' or '.join(map(str, lengths))} tokens (ignore_eos), so every mode generates as many; each "
                  f"client sends "
                  f"{args.requests} requests one after another. mixed: requests "
                  f"spread over the {len(tasks)} tasks ({', '.join(tasks)}); single: the same prompts, all to "
                  f"{tasks[0]}; sequential: the mixed requests one at a time. Medians over rounds; a ratio is "
                  "the median of per-round ratios. Targets at 16 clients: mixed / single >= 0.8, mixed / one at "
                  "a time >= 3.")


if __name__ == "__main__":
    main()
