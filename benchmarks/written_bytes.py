"""The bytes a MoSEs adapter writes as tasks are added, on SmolLM2-135M (30 layers, q/k/v/o) with the package
defaults (reading R2): after t tasks, the size of the three files `save_pretrained` writes and
`capacity()["stored_bytes"]` (they must be equal), against t per-task peft LoRAs of rank 2 and rank 8 (their
`adapter_model.safetensors`, saved by peft, times t). Bytes do not depend on training, so the tasks are
added and ended untrained, which keeps the benchmark to seconds.

    python benchmarks/written_bytes.py [--tasks 1,2,4,8,14,20] [--out written_bytes]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from common import LORA_TARGETS, results_name, write_results


def file_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def lora_bytes(base, rank: int) -> int:
    """adapter_model.safetensors of one peft LoRA (alpha 2 * rank) on q/k/v/o, as peft saves it."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="1,2,4,8,14,20", help="task counts to measure at")
    parser.add_argument("--out", default="written_bytes", type=results_name)
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.tasks.split(",")})

    from moses import MoSEsConfig, get_moses_model
    from moses.models import load_model

    base, _ = load_model("smollm2-135m")
    per_lora = {rank: lora_bytes(base, rank) for rank in (2, 8)}
    model = get_moses_model(base, MoSEsConfig())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(1, counts[-1] + 1):
            model.add_task(f"task-{t}")
            model.end_task()
            if t not in counts:
                continue
            folder = Path(tmp) / f"t{t}"
            model.save_pretrained(folder)
            written, reported = file_bytes(folder), model.capacity()["stored_bytes"]
            if written != reported:
                raise SystemExit(f"after {t} tasks capacity() reports {reported:,} bytes but {written:,} were written")
            rows.append({"tasks": t, "written bytes": written, "capacity() stored_bytes": reported,
                         "bytes per task": round(written / t),
                         "/ per-task LoRA r=2": round(written / (t * per_lora[2]), 3),
                         "/ per-task LoRA r=8": round(written / (t * per_lora[8]), 3)})
            print(f"{t} tasks: {written:,} bytes", flush=True)
    columns = list(rows[0])
    write_results(args.out, {"model": "smollm2-135m", "config": MoSEsConfig().to_dict(),
                             "lora_adapter_bytes": per_lora, "rows": rows}, rows, columns,
                  notes="SmolLM2-135M, MoSEs package defaults (reading R2: one rank-2 subexpert per task and "
                  "projection, top-2 borrowing, routers on the subexpert features), fp32; written bytes = the "
                  "three files of save_pretrained (weights, adapter_config.json, moses_tasks.json), equal to "
                  f"capacity()'s stored_bytes. One peft LoRA on q/k/v/o: r=2 {per_lora[2]:,} bytes, r=8 "
                  f"{per_lora[8]:,} bytes (adapter_model.safetensors).")


if __name__ == "__main__":
    main()
