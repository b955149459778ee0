"""Training step time and peak memory on SmolLM2-135M over several batch shapes, CPU: MoSEs (the package
default, reading R2 as in benchmarks/trace_cpu.yaml, and reading R1) against peft LoRA r=8 (same active rank) and r=32
(same pool rank), on q/k/v/o, in fp32 and under bf16 autocast. Each adapter and precision runs in its own
process (its peak memory is its own) and times every shape there; the processes take turns for several
rounds, and each ratio is the median over rounds of the ratio against LoRA r=8 of the same precision and
round. With --interleave, every adapter of a precision lives in one process and they take single steps in
turn, so each ratio is paired step by step (no process-to-process drift; no per-adapter peak memory).
MoSEs is timed on its third task (two ended before it), so R2 has subexperts to borrow.

    python benchmarks/step_time.py [--shapes 8x32,8x64,4x128,8x256] [--steps 4] [--rounds 2]
                                   [--precisions fp32,bf16] [--adapters lora-r8,moses,moses-r1] [--out step_time]
                                   [--interleave]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import MOSES_OPTIONS, PeakRSS, results_name, training_adapter, write_results

ADAPTERS = ("lora-r8", "lora-r32", *MOSES_OPTIONS)
SHAPES = "8x32,8x64,4x128,8x256"
ANSWER = 32
TASKS_BEFORE = 2


def _timed_steps(name: str, precision: str):
    """(the vocabulary size, a function that runs one training step on a batch and returns its seconds, the
    number of trained parameters) for adapter `name` on a fresh SmolLM2."""
    import torch

    from moses.data.loss import answer_loss
    from moses.models import load_model
    from moses.precision import autocast, frozen_weights_cast

    torch.manual_seed(0)
    base, _ = load_model("smollm2-135m")
    model, groups = training_adapter(name, base, 3e-4, TASKS_BEFORE)
    optimizer = torch.optim.AdamW(groups)
    model.train()

    def step(batch: dict) -> float:
        began = time.perf_counter()
        # as the runner trains (runner/train.py): the frozen base's bf16 casts made once, not per step
        with frozen_weights_cast(model, precision), autocast(precision, "cpu"):
            loss, _ = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - began

    groups_size = sum(p.numel() for g in groups for p in g["params"] if p.requires_grad)
    return base.config.vocab_size, step, groups_size


def _batch(vocab_size: int, batch_size: int, tokens: int) -> dict:
    import torch

    ids = torch.randint(0, vocab_size, (batch_size, tokens))
    labels = ids.clone()
    labels[:, : tokens - min(ANSWER, tokens // 2)] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def one(name: str, steps: int, precision: str, shapes: list[tuple[int, int]]) -> dict:
    vocab_size, step, trainable = _timed_steps(name, precision)
    by_shape = {}
    with PeakRSS() as peak:
        for batch_size, tokens in shapes:
            batch = _batch(vocab_size, batch_size, tokens)
            step(batch)  # warm-up
            times = [step(batch) for _ in range(steps)]
            by_shape[f"{batch_size}x{tokens}"] = {"median_step_s": statistics.median(times), "step_times_s": times}
    return {"adapter": name, "precision": precision, "shapes": by_shape, "peak_rss_bytes": peak.peak,
            "trainable_parameters": trainable}


def together(names: list[str], steps: int, precision: str, shapes: list[tuple[int, int]]) -> dict:
    """Every adapter in one process, each on its own copy of the base model, taking single steps in turn on
    the same batch: a slow phase of the CPU hits all of them alike, so the per-step ratios are paired."""
    timed = {name: _timed_steps(name, precision) for name in names}
    by_shape = {}
    for batch_size, tokens in shapes:
        batch = _batch(next(iter(timed.values()))[0], batch_size, tokens)
        for _, step, _ in timed.values():
            step(batch)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(steps):
            for name, (_, step, _) in timed.items():
                times[name].append(step(batch))
        by_shape[f"{batch_size}x{tokens}"] = times
    return {"precision": precision, "shapes": by_shape,
            "trainable_parameters": {name: t[2] for name, t in timed.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default=SHAPES, help="batch x tokens, comma-separated")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--adapters", default="lora-r8,moses,moses-r1")
    parser.add_argument("--out", default="step_time", type=results_name,
                        help="results name under benchmarks/results/")
    parser.add_argument("--interleave", action="store_true",
                        help="all adapters of a precision in one process, single steps in turn (paired ratios)")
    parser.add_argument("--one", choices=ADAPTERS)
    parser.add_argument("--together", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.precision, shapes)))
        return
    precisions = args.precisions.split(",")
    adapters = args.adapters.split(",")
    if "lora-r8" not in adapters:
        raise SystemExit("the reference, lora-r8, must be among --adapters")
    if args.together:
        print(json.dumps(together(adapters, args.steps, args.precision, shapes)))
        return
    if args.interleave:
        interleaved(args, precisions, adapters, shapes)
        return
    names = [(a, p) for p in precisions for a in adapters]
    rounds: list[dict[str, dict]] = []
    for round_index in range(args.rounds):  # the adapters take turns, so slow phases of the CPU hit all of them
        runs = {}
        for adapter, precision in names:
            out = subprocess.run([sys.executable, __file__, "--one", adapter, "--precision", precision,
                                  "--steps", str(args.steps), "--shapes", args.shapes], capture_output=True,
                                 text=True, check=True)
            runs[f"{adapter} {precision}"] = result = json.loads(out.stdout.strip().splitlines()[-1])
            steps = ", ".join(f"{k} {v['median_step_s']:.2f}s" for k, v in result["shapes"].items())
            print(f"round {round_index + 1}/{args.rounds} {adapter} {precision}: {steps}; peak "
                  f"{result['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
        rounds.append(runs)

    def ratio(name: str, against: str, shape: str) -> float:
        return statistics.median(r[name]["shapes"][shape]["median_step_s"]
                                 / r[against]["shapes"][shape]["median_step_s"] for r in rounds)

    shape_names = [f"{b}x{t}" for b, t in shapes]
    rows = []
    for adapter, precision in names:
        name = f"{adapter} {precision}"
        row = {"adapter": adapter, "precision": precision}
        for shape in shape_names:
            seconds = statistics.median(r[name]["shapes"][shape]["median_step_s"] for r in rounds)
            row[f"{shape} s"] = round(seconds, 3)
            row[f"{shape} / LoRA r8"] = round(ratio(name, f"lora-r8 {precision}", shape), 3)
            if precision != "fp32" and "fp32" in precisions:
                row[f"{shape} / own fp32"] = round(ratio(name, f"{adapter} fp32", shape), 3)
        row["peak GiB"] = round(statistics.median(r[name]["peak_rss_bytes"] for r in rounds) / 2**30, 2)
        row["trainable params"] = rounds[0][name]["trainable_parameters"]
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_results(args.out, {"shapes": shape_names, "answer_tokens": ANSWER, "tasks_before": TASKS_BEFORE,
                                "moses_options": MOSES_OPTIONS, "rounds": rounds}, rows, columns,
                  notes="SmolLM2-135M (GGUF, float32 weights; bf16 rows under torch.autocast), 2-core CPU, AdamW, "
                  "the frozen base weights' bf16 casts made once per run as the runner does "
                  "(`precision.frozen_weights_cast`), "
                  f"loss on the last {ANSWER} tokens (half of shorter rows). Each adapter and precision runs in its "
                  f"own process over every shape: one warm-up step per shape, then the median of {args.steps} steps; "
                  f"the processes take turns for {args.rounds} rounds, and a ratio is the median of the per-round "
                  "ratios against LoRA r=8 of the same precision (`/ own fp32`: the same adapter in fp32). MoSEs "
                  f"trains its task {TASKS_BEFORE + 1} ({TASKS_BEFORE} ended before it). Issue 12's target: MoSEs / "
                  "LoRA r8 <= 1.10 at every shape, in fp32 and bf16.")


def interleaved(args, precisions: list[str], adapters: list[str], shapes: list[tuple[int, int]]) -> None:
    """--interleave: per precision one process holds every adapter; a ratio is the median over the steps of
    the adapter's step time over LoRA r8's step just before it, with the quartiles of those ratios."""
    runs = {}
    for precision in precisions:
        out = subprocess.run([sys.executable, __file__, "--together", "--precision", precision, "--adapters",
                              ",".join(adapters), "--steps", str(args.steps), "--shapes", args.shapes],
                             capture_output=True, text=True, check=True)
        runs[precision] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = []
    for precision in precisions:
        for adapter in adapters:
            row = {"adapter": adapter, "precision": precision}
            for shape, times in runs[precision]["shapes"].items():
                ratios = [t / ref for t, ref in zip(times[adapter], times["lora-r8"], strict=True)]
                quartiles = statistics.quantiles(ratios, n=4)
                row[f"{shape} s"] = round(statistics.median(times[adapter]), 3)
                row[f"{shape} / LoRA r8"] = round(statistics.median(ratios), 3)
                row[f"{shape} quartiles"] = "" if adapter == "lora-r8" else f"{quartiles[0]:.2f}-{quartiles[2]:.2f}"
            row["trainable params"] = runs[precision]["trainable_parameters"][adapter]
            rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_results(args.out, {"shapes": [f"{b}x{t}" for b, t in shapes], "answer_tokens": ANSWER,
                             "tasks_before": TASKS_BEFORE, "moses_options": MOSES_OPTIONS, "runs": runs},
                  rows, columns,
                  notes="SmolLM2-135M (GGUF, float32 weights; bf16 rows under torch.autocast), 2-core CPU, AdamW, "
                  "the frozen base weights' bf16 casts made once per run as the runner does "
                  f"(`precision.frozen_weights_cast`), loss on the last {ANSWER} tokens (half of shorter rows). "
                  "Interleaved: per precision, every adapter lives in one process on its own copy of the model, "
                  f"and at each shape they take single steps in turn, {args.steps} each after one warm-up step. "
                  "A ratio is the median over those steps of the adapter's step time over LoRA r8's in the same "
                  f"turn; `quartiles` gives the spread of those ratios. MoSEs trains its task {TASKS_BEFORE + 1} "
                  f"({TASKS_BEFORE} ended before it). Issue 12's target: MoSEs / LoRA r8 <= 1.10 at every shape. "
                  "Peak memory comes from the default mode (one process per adapter).")


if __name__ == "__main__":
    main()
