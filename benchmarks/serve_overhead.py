"""What the HTTP server adds to one batch: the same 16 mixed-task requests (the 4-task proxy's prompts, one task
per request in turn, 16 new tokens each, greedy, ignore_eos) given to `Engine.generate` directly, and sent by
16 concurrent threads of the official `openai` client to `create_app(engine)` under uvicorn in this process;
interleaved rounds. Also the time of the server's own `generate` call and its batch size, to tell the server's
overhead (window, HTTP, JSON) from the generation itself. The adapter is SmolLM2 with four ended MoSEs tasks
(package defaults, untrained: the compute of a trained one is the same).

    .venv/bin/python benchmarks/serve_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import PROXY_DATA, free_port, mixed_requests, proxy_engine, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--data-dir", default=str(PROXY_DATA))
    args = parser.parse_args()

    import openai
    import torch
    import uvicorn

    from moses.serve import create_app

    engine, tasks, precision, why = proxy_engine(args.data_dir, args.requests)
    requests = mixed_requests(tasks, args.requests, 16)
    jobs = [(r.task, r.prompt) for r in requests]

    calls: list[tuple[int, float]] = []  # (batch size, seconds) of every generate call
    generate = engine.generate

    def timed_generate(batch, *rest, **options):
        began = time.perf_counter()
        out = generate(batch, *rest, **options)
        calls.append((len(batch), time.perf_counter() - began))
        return out

    engine.generate = timed_generate
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)

    def over_http() -> None:
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(lambda job: client.completions.create(
                model=job[0], prompt=job[1], max_tokens=16, temperature=0, extra_body={"ignore_eos": True}), jobs))

    engine.generate(requests[:2])  # warm-up, and the client's connections
    over_http()
    seconds: dict[str, list[float]] = {"engine": [], "server": [], "server's generate": []}
    batches = []
    try:
        for round_ in range(args.rounds):
            began = time.perf_counter()
            engine.generate(requests)
            seconds["engine"].append(time.perf_counter() - began)
            calls.clear()
            began = time.perf_counter()
            over_http()
            seconds["server"].append(time.perf_counter() - began)
            seconds["server's generate"].append(sum(s for _, s in calls))
            batches.append([n for n, _ in calls])
            inside = seconds["server's generate"][-1]
            print(f"round {round_}: engine {seconds['engine'][-1]:.2f} s, server {seconds['server'][-1]:.2f} s "
                  f"(its generate {inside:.2f} s, batches {batches[-1]})", flush=True)
    finally:
        server.should_exit = True
    rows = [{"path": path, "median s": statistics.median(values), "min s": min(values), "max s": max(values),
             "median / engine": statistics.median(v / e for v, e in zip(values, seconds["engine"], strict=True))}
            for path, values in seconds.items()]
    notes = (f"SmolLM2-135M + MoSEs (package defaults, 4 tasks), precision {precision} ({why}), "
             f"{torch.get_num_threads()} threads; {len(jobs)} mixed-task requests, 16 new tokens each; "
             f"{args.rounds} interleaved rounds; the server's batches per round: {batches}. 'server' is the wall "
             "time of the 16 concurrent HTTP requests; 'server's generate' the time of the engine calls inside it.")
    write_results("serve_overhead", {"seconds": seconds, "batches": batches, "precision": precision}, rows,
                  ["path", "median s", "min s", "max s", "median / engine"], notes=notes)


if __name__ == "__main__":
    main()
