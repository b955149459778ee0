"""Why MoSEs' router runs in fp32 under bf16 autocast: on this CPU a thin matmul has a fixed cost in bf16
that fp32 does not have. Times `a @ b` for the shapes of one MoSEs R2 layer at 8 x 32 tokens (router logits
and their gradients, the subexpert projections) and the base projection, fp32 against bf16, interleaved.

    python benchmarks/thin_matmul.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import median_seconds, write_results

# (rows, inner, cols): router logits and their two gradients (R2, task 3: 6 features, 3 subexperts), the
# subexpert projections A x and B (A x) at 8 and 16 features, and the base q projection of SmolLM2
SHAPES = [(256, 6, 3), (3, 256, 6), (256, 3, 6), (256, 16, 8), (256, 576, 16), (256, 16, 576), (256, 6, 576),
          (256, 576, 576)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for m, k, n in SHAPES:
        times = {torch.float32: [], torch.bfloat16: []}
        repeats = 50 if m * k * n > 1e7 else 500
        operands = {dt: (torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)) for dt in times}
        for _ in range(args.rounds):  # interleaved, so drifts of the machine hit both
            for dt, (a, b) in operands.items():
                times[dt].append(median_seconds(lambda a=a, b=b, n=repeats: [a @ b for _ in range(n)], 3) / repeats)
        fp32, bf16 = (statistics.median(times[dt]) * 1e6 for dt in (torch.float32, torch.bfloat16))
        rows.append({"shape": f"{m}x{k} @ {k}x{n}", "fp32_us": fp32, "bf16_us": bf16, "bf16/fp32": bf16 / fp32})
    write_results("thin_matmul", {"rows": rows, "threads": torch.get_num_threads(), "rounds": args.rounds}, rows,
                  ["shape", "fp32_us", "bf16_us", "bf16/fp32"],
                  notes=f"Median microseconds per matmul, {torch.get_num_threads()} threads, torch "
                        f"{torch.__version__}; {args.rounds} interleaved rounds.")


if __name__ == "__main__":
    main()
