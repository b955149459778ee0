"""Ragged decoding attention (serve/ragged.py) against every row attending over the longest prompt's width, on
the decoding steps alone: one mixed-task batch of the 4-task proxy's prompts (as benchmarks/prefill.py) is
generated with 1 and with 1 + N new tokens, and the difference is the time of N decoding steps (the prefill,
most of a short answer's time and the noisiest part of it, cancels). The two modes take turns for several
rounds; the ratio is the median of per-round ratios.

    .venv/bin/python benchmarks/ragged_decode.py [--requests 16] [--steps 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import PROXY_DATA, mixed_requests, proxy_engine, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(PROXY_DATA))
    args = parser.parse_args()

    import torch

    engine, tasks, precision, why = proxy_engine(args.data_dir, args.requests)

    def seconds(tokens: int) -> float:
        began = time.perf_counter()
        engine.generate(mixed_requests(tasks, args.requests, tokens))
        return time.perf_counter() - began

    engine.generate(mixed_requests(tasks, args.requests, 2))  # warm-up
    modes = {"ragged": True, "full-width": False}
    decode: dict[str, list[float]] = {mode: [] for mode in modes}
    prefill: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode, ragged in modes.items():
            engine.ragged_decode = ragged
            first = seconds(1)
            whole = seconds(1 + args.steps)
            prefill[mode].append(first)
            decode[mode].append(whole - first)
            print(f"round {round_ + 1}: {mode} prefill + 1 token {first:.2f} s, {args.steps} decoding steps "
                  f"{whole - first:.2f} s", flush=True)
    ratios = [full / ragged for ragged, full in zip(decode["ragged"], decode["full-width"], strict=True)]
    rows = [{"mode": mode, "prefill + 1 token s": statistics.median(prefill[mode]),
             "decoding steps s": statistics.median(decode[mode]),
             "full-width / ragged (decoding)": statistics.median(ratios) if mode == "ragged" else ""}
            for mode in modes]
    notes = (f"SmolLM2-135M + MoSEs (package defaults, 4 tasks), precision {precision} ({why}), "
             f"{torch.get_num_threads()} threads; {args.requests} mixed-task requests (the proxy's prompts, one "
             f"task per request in turn), greedy; 'decoding steps' is the time of {1 + args.steps} new tokens "
             f"minus that of 1 ({args.steps} steps); medians over {args.rounds} interleaved rounds; per-round "
             f"ratios {', '.join(f'{r:.2f}' for r in ratios)}.")
    write_results("ragged_decode", {"rows": rows, "decode_seconds": decode, "prefill_seconds": prefill,
                                    "ratios": ratios, "precision": precision, "threads": torch.get_num_threads()},
                  rows, ["mode", "prefill + 1 token s", "decoding steps s", "full-width / ragged (decoding)"],
                  notes=notes)


if __name__ == "__main__":
    main()
