"""`moses demo`: the embedded stream with MoSEs and with sequential LoRA, side by side."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from moses.report.tables import matrix_markdown, metrics_markdown
from moses.runner.config import RunConfig
from moses.runner.run import run

DEMO_METHODS = ("moses", "seq-lora")
# the run's lr (3e-3) is LoRA's; MoSEs (reading R2) runs at its swept lr on the TRACE proxy, 5e-3. Measured on
# the demo stream: OP 93.8 at 5e-3, 60.4 at 1e-2 (reading R1's lr), 0.0 at 2e-2 (diverged)
DEMO_OPTIONS = {"moses": {"lr": 5e-3}}


def run_demo(config: RunConfig, methods: tuple[str, ...] = DEMO_METHODS, resume: bool = False,
             echo=print) -> dict[str, dict[str, Any]]:
    """One run per method under <output>/<method>; prints each accuracy matrix with OP and BWT."""
    began = time.perf_counter()
    config = replace(config, options_by_method={**DEMO_OPTIONS, **config.options_by_method})
    all_results = {}
    for method in methods:
        method_config = config.for_method(method, str(Path(config.output) / method))
        all_results[method] = run(method_config, resume=resume, echo=echo)
    echo("")
    for method, results in all_results.items():
        echo(f"## {method}: accuracy (%) on task j (columns) after training task i (rows)")
        echo(matrix_markdown(results["tasks"], results["R"], results["zero_shot"]))
        metrics = {k: results["metrics"][k] for k in ("OP", "BWT", "forgetting")}
        echo(metrics_markdown(metrics))
        echo(f"training {sum(results['train_seconds']):.0f}s, evaluation {sum(results['eval_seconds']):.0f}s")
        echo("")
    echo(f"runs written under {config.output}/ ({time.perf_counter() - began:.0f}s in all); "
         f"`moses report {config.output}/moses` for a report")
    return all_results
