"""Shared by the benchmark scripts: medians, peak memory, and the JSON + markdown result files."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def interleaved_ratios(candidate, reference, rounds: int, repeats: int = 1, warmup: int = 1) -> dict:
    """Time `candidate` and `reference` alternately for several rounds and take the ratio within each round,
    so drifts of a shared CPU (other load, clocks) hit both sides; returns the median ratio and its spread."""
    for _ in range(warmup):
        candidate()
        reference()
    ratios, candidate_s, reference_s = [], [], []
    for _ in range(rounds):
        c = median_seconds(candidate, repeats, warmup=0)
        r = median_seconds(reference, repeats, warmup=0)
        candidate_s.append(c)
        reference_s.append(r)
        ratios.append(c / r)
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "candidate_s": statistics.median(candidate_s), "reference_s": statistics.median(reference_s),
            "rounds": rounds}


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled from /proc every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.current())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())

    @staticmethod
    def current() -> int:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def results_name(text: str) -> str:
    """An argparse type for `--out`: a name under benchmarks/results/ (it may hold a folder, seeds/pooled),
    not a path from elsewhere, which write_results would nest inside results/."""
    path = Path(text)
    if path.is_absolute() or ".." in path.parts or text.startswith("benchmarks/"):
        raise argparse.ArgumentTypeError(f"{text}: a name under benchmarks/results/, such as seeds/pooled")
    return text


def write_results(name: str, payload: dict, table_rows: list[dict], columns: list[str], notes: str = "") -> None:
    """benchmarks/results/<name>.json and <name>.md (a short table), each written atomically."""
    from moses.io import atomic_write_text  # after the sys.path insert above (a checkout without an install)

    (RESULTS / name).parent.mkdir(parents=True, exist_ok=True)  # a name may hold a folder: seeds/pooled
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=2) + "\n")

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = [f"# {name}", "", notes, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in table_rows]
    atomic_write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# MoSEs configurations the timing benchmarks compare: the package default (reading R2) and reading R1
MOSES_OPTIONS = {"moses": {},  # the package defaults: reading R2, one rank-2 subexpert per task, top-2 borrowing
                 "moses-r1": {"ownership": "entries", "router_input": "hidden", "rank": 4}}  # the defaults before 0.2.0


def random_lora(base):
    """peft LoRA r=8 (alpha 16) on q/k/v/o with B drawn from N(0, 0.01), so it changes the outputs as a
    trained one does: the LoRA the inference benchmarks time."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return model


def training_adapter(name: str, base, lr: float, tasks_before: int = 0):
    """(model, optimizer param groups) for timing a training step: "lora-r<rank>" (peft LoRA, alpha 2 * rank,
    on q/k/v/o) or a MOSES_OPTIONS entry, trained as its task `tasks_before + 1` (earlier ones ended first)."""
    if name in MOSES_OPTIONS:
        from moses import MoSEsConfig, get_moses_model

        model = get_moses_model(base, MoSEsConfig(**MOSES_OPTIONS[name]))
        for k in range(tasks_before):
            model.add_task(f"earlier-{k}")
            model.end_task()
        model.add_task("timed")
        return model, model.optimizer_param_groups(lr)
    from peft import LoraConfig, get_peft_model

    rank = int(name.removeprefix("lora-r"))
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS))
    return model, [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0, "lr": lr}]


PROXY_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "trace500"
PROXY_TASKS = ["C-STANCE", "Py150", "ScienceQA", "NumGLUE-ds"]


def proxy_engine(data_dir: str, n_test: int):
    """(engine, the proxy's tasks, precision, why) for the serving benchmarks: SmolLM2 with a MoSEs adapter of
    the 4-task proxy's tasks, each added and ended untrained (the compute of a trained one is the same), in
    the precision `auto` picks here. Exits with one line when TRACE-500 is not at `data_dir`."""
    from moses import MoSEsConfig, get_moses_model
    from moses.data.trace import load_trace
    from moses.models import load_model
    from moses.precision import resolve_precision
    from moses.serve.engine import Engine

    if not Path(data_dir).is_dir():
        raise SystemExit(f"{data_dir}: TRACE-500 not found (--data-dir)")
    tasks = load_trace(data_dir, tasks=PROXY_TASKS, n_test=n_test)
    base, tokenizer = load_model("smollm2-135m")
    model = get_moses_model(base, MoSEsConfig())
    for task in tasks:
        model.add_task(task.name)
        model.end_task()
    precision, why = resolve_precision("auto", "cpu")
    return Engine(model, tokenizer, "smollm2-135m", precision=precision), tasks, precision, why


def mixed_requests(tasks, count: int, max_tokens: int) -> list:
    """`count` greedy requests of exactly `max_tokens` new tokens over the proxy's tasks in turn (request i: task
    i % 4, its (i // 4)-th test prompt), as the serving benchmarks send them."""
    from moses.serve.engine import GenerationRequest

    return [GenerationRequest(prompt=tasks[i % len(tasks)].test[i // len(tasks)]["prompt"],
                              task=tasks[i % len(tasks)].name, max_tokens=max_tokens, temperature=0, ignore_eos=True)
            for i in range(count)]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a benchmark's server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
