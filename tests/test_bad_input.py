"""The bad-input suite (issue 13; docs/reliability.md lists every case): each bad file, setting, checkpoint or
flag gives one line on stderr naming it, exit code 2, no traceback, and leaves what was already written as it
was. Runs `moses.cli.main` in-process on the tiny random Llama."""

import json
import shutil
from pathlib import Path

import pytest

from moses.cli import main

from conftest import assert_one_error_line

GOOD = [{"prompt": "Is a cat alive? Answer:", "answer": " yes"}, {"prompt": "Is a rock alive? Answer:",
                                                                  "answer": " no"}]


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def manifest(tmp: Path, train, test=GOOD, train_name="train.json", extra: dict | None = None,
             tasks: list | None = None) -> list[str]:
    write(tmp / train_name, train)
    write(tmp / "test.json", test)
    spec = tasks or [{"name": "a", "train": train_name, "test": "test.json", **(extra or {})}]
    write(tmp / "stream.json", {"tasks": spec})
    return ["run", "--manifest", str(tmp / "stream.json")]


def trace(tmp: Path, files: dict[str, object], tasks: str = "FOMC") -> list[str]:
    for name, content in files.items():
        write(tmp / "trace" / "FOMC" / name, content)
    return ["run", "--data-dir", str(tmp / "trace"), "--tasks", tasks]


def config_file(tmp: Path, text: str) -> list[str]:
    write(tmp / "c.yaml", text)
    return ["run", "--config", str(tmp / "c.yaml")]


# (id, builder(tmp) -> argv, what the one line must contain)
CASES = [
    # data files
    ("invalid-json", lambda t: manifest(t, '[{"prompt": "a" "answer": "b"}]'), "train.json: malformed JSON at line 1"),
    ("invalid-jsonl", lambda t: manifest(t, '{"prompt": "a", "answer": "b"}\n{"prompt": \n', train_name="train.jsonl"),
     "train.jsonl: malformed JSON on line 2"),
    ("not-a-list", lambda t: manifest(t, {"prompt": "a", "answer": "b"}), "train.json: expected a JSON list"),
    ("item-not-object", lambda t: manifest(t, ["just text"]), "train.json: item 0 is not an object"),
    ("answer-not-string", lambda t: manifest(t, [{"prompt": "a", "answer": 3}]),
     "train.json: item 0 field 'answer' is not a string"),
    ("missing-prompt", lambda t: manifest(t, [{"answer": "b"}]), "train.json: item 0 has no field 'prompt'"),
    ("empty-list", lambda t: manifest(t, []), "train.json: holds no examples"),
    ("empty-jsonl", lambda t: manifest(t, "\n\n", train_name="train.jsonl"), "train.jsonl: holds no examples"),
    ("empty-prompt", lambda t: manifest(t, [{"prompt": "", "answer": ""}]),
     "train.json: item 0 field 'prompt' is empty"),
    ("blank-answer", lambda t: manifest(t, [{"prompt": "a", "answer": " \n\t"}]),
     "train.json: item 0 field 'answer' is empty"),
    ("non-utf8", lambda t: manifest(t, b'[{"prompt": "caf\xe9", "answer": "b"}]'), "train.json: cannot read"),
    ("huge-line", lambda t: manifest(t, [{"prompt": "x" * 1_000_001, "answer": "b"}]),
     "train.json: item 0 field 'prompt' has 1,000,001 characters"),
    ("duplicate-task", lambda t: manifest(t, GOOD, tasks=[{"name": "a", "train": "train.json",
                                                           "test": "test.json"}] * 2), "duplicate task name 'a'"),
    ("unknown-manifest-key", lambda t: manifest(t, GOOD, extra={"trian": "x"}), "unknown key(s) trian"),
    ("unknown-metric", lambda t: manifest(t, GOOD, extra={"metric": "bleu"}), "unknown metric 'bleu'"),
    ("manifest-no-tasks", lambda t: ["run", "--manifest", str(write(t / "m.yaml", "tasks: []\n"))],
     "m.yaml: expected a non-empty list under 'tasks'"),
    ("missing-test-split", lambda t: trace(t, {"train.json": GOOD}), "FOMC/test.json: file not found"),
    ("missing-train-split", lambda t: trace(t, {"test.json": GOOD, "eval.json": GOOD}), "pass --eval-as-train"),
    ("duplicate-trace-task", lambda t: trace(t, {"train.json": GOOD, "test.json": GOOD}, "FOMC,FOMC"),
     "--tasks names FOMC twice"),
    ("eval-split-without-eval", lambda t: [*manifest(t, GOOD), "--split", "eval"],
     "tasks[0]: split 'eval' needs an 'eval' file"),
    ("eval-split-of-trace-without-eval", lambda t: [*trace(t, {"train.json": GOOD, "test.json": GOOD}), "--split",
                                                     "eval"], "FOMC/eval.json: file not found (split 'eval'"),
    ("missing-long14-dir", lambda t: ["run", "--stream", "long14", "--data-dir", str(t / "absent")],
     "absent: LONG-14 data directory not found"),
    ("bad-max-new-tokens", lambda t: manifest(t, GOOD, extra={"max_new_tokens": "many"}),
     "max_new_tokens must be a positive integer or 'auto'"),
    # settings
    ("unknown-split", lambda t: ["run", "--split", "valid"], "config split='valid': must be one of test, eval"),
    ("demo-has-no-eval-split", lambda t: ["run", "--split", "eval"], "the demo stream has no eval split"),
    ("zero-epochs", lambda t: ["run", "--epochs", "0"], "config epochs=0: must be a positive integer"),
    ("negative-lr", lambda t: ["run", "--lr", "-0.1"], "config lr=-0.1: must be a finite number > 0"),
    ("nan-lr", lambda t: config_file(t, "lr: .nan\n"), "config lr=nan: must be a finite number > 0"),
    ("inf-lr", lambda t: ["run", "--lr", "inf"], "config lr=inf: must be a finite number > 0"),
    ("negative-n-test", lambda t: ["run", "--n-test", "-1"], "config n_test=-1"),
    ("zero-grad-norm", lambda t: ["run", "--max-grad-norm", "0"], "config max_grad_norm=0.0"),
    ("top-k-above-n", lambda t: ["run", "--option", "top_k=9"], "MoSEsConfig.top_k=9: must be at most num_subexperts"),
    ("density-above-1", lambda t: ["run", "--option", "task_density=1.5"], "MoSEsConfig.task_density=1.5"),
    ("nan-density", lambda t: ["run", "--option", "task_density=NaN"], "MoSEsConfig.task_density=nan"),
    ("targets-match-nothing", lambda t: ["run", "--option", 'target_modules=["nope_proj"]'],
     "target_modules=['nope_proj'] matches no nn.Linear"),
    ("unknown-method", lambda t: ["run", "--method", "magic"], "unknown method 'magic'"),
    ("unknown-option", lambda t: ["run", "--option", "experts=3"], "unknown MoSEsConfig field(s): experts"),
    ("yaml-not-mapping", lambda t: config_file(t, "- lr\n- 0.1\n"), "c.yaml: expected a mapping of settings"),
    ("unknown-setting", lambda t: config_file(t, "batch_sise: 4\n"), "c.yaml: unknown setting(s) batch_sise"),
    ("malformed-yaml", lambda t: config_file(t, "lr: [0.1\n"), "c.yaml: malformed YAML at line"),
    # command line
    ("missing-config", lambda t: ["run", "--config", str(t / "absent.yaml")], "absent.yaml: file not found"),
    ("missing-manifest", lambda t: ["run", "--manifest", str(t / "absent.json")], "absent.json: file not found"),
    ("missing-run-dir", lambda t: ["eval", str(t / "absent")], "no config.json (not a run directory)"),
    ("output-is-a-file", lambda t: ["run", "--output", str(write(t / "file", "x"))], "is a file, not a directory"),
    ("missing-model", lambda t: ["run", "--model", str(t / "absent.gguf")], "absent.gguf: GGUF file not found"),
]


@pytest.mark.parametrize(("builder", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(builder, message, tiny_model_dir, tmp_path, capsys):
    argv = builder(tmp_path)
    output = tmp_path / "out"
    write(output / "notes.txt", "earlier work")  # something already written, which must survive
    if argv[0] == "run":
        if "--output" not in argv:
            argv += ["--output", str(output)]
        if "--model" not in argv:
            argv += ["--model", tiny_model_dir]
        argv += ["--device", "cpu", "--epochs", "1"] if "--epochs" not in argv else ["--device", "cpu"]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert_one_error_line(err, message)
    assert {p: p.read_bytes() for p in before} == before  # nothing already written is lost or changed


def test_the_suite_covers_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_a_utf8_bom_is_read_like_plain_utf8(tmp_path):
    from moses.data.stream import read_examples

    path = write(tmp_path / "bom.json", b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert read_examples(path) == GOOD


# ---- checkpoints: a run directory whose saved state was damaged or does not fit ----
@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("bad-ckpt") / "run"
    assert main(["run", "--model", tiny_model_dir, "--output", str(output), "--n-train", "8", "--n-test", "4",
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--precision", "fp32"]) == 0
    return output


def damaged_copy(run_dir: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damage(copy, copy / "checkpoints" / "01-size")
    return copy


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def other_base_model(tiny_model_dir: str, directory: Path) -> str:
    """The same tokenizer on a wider random Llama: an adapter of the tiny one does not fit it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 48, 96
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


CHECKPOINT_CASES = [
    ("truncated-safetensors", lambda run, ckpt, model, tmp: truncate(ckpt / "adapter_model.safetensors"),
     "adapter_model.safetensors does not match its checksum"),
    ("tasks-edited-by-hand", lambda run, ckpt, model, tmp: write(ckpt / "moses_tasks.json", '{"tasks": "x"}'),
     "moses_tasks.json does not match its checksum"),
    ("another-n", lambda run, ckpt, model, tmp: edit_json(run / "config.json",
                                                           lambda c: c["method_options"].update(num_subexperts=4)),
     "saved with another config (num_subexperts: saved 8, given 4"),
    ("another-rank", lambda run, ckpt, model, tmp: edit_json(run / "config.json",
                                                              lambda c: c["method_options"].update(rank=3)),
     "saved with another config (rank: saved 2, given 3"),
    ("another-base-model", lambda run, ckpt, model, tmp: edit_json(
        run / "config.json", lambda c: c.update(model=other_base_model(model, tmp / "wide"))),
     "saved shape"),
]


@pytest.mark.parametrize(("damage", "message"), [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES])
def test_damaged_or_mismatched_checkpoints_are_one_line(damage, message, finished_run, tiny_model_dir, tmp_path,
                                                        capsys):
    run_dir = damaged_copy(finished_run, tmp_path, lambda run, ckpt: damage(run, ckpt, tiny_model_dir, tmp_path))
    results = (run_dir / "results.json").read_bytes()
    assert main(["eval", str(run_dir)]) == 2
    assert_one_error_line(capsys.readouterr().err, message)
    assert (run_dir / "results.json").read_bytes() == results


def test_the_adapter_loader_names_the_damaged_file(finished_run, tiny_model_dir, tmp_path):
    """Outside a run directory (no manifest), `MoSEsModel.from_pretrained` checks each file itself."""
    from moses.adapter import MoSEsModel
    from moses.errors import CheckpointError
    from moses.models import load_model

    adapter = tmp_path / "adapter"
    shutil.copytree(finished_run / "checkpoints" / "01-size", adapter)
    truncate(adapter / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: corrupt or truncated"):
        MoSEsModel.from_pretrained(load_model(tiny_model_dir)[0], adapter)
    shutil.copy(finished_run / "checkpoints" / "01-size" / "adapter_model.safetensors", adapter)
    write(adapter / "moses_tasks.json", '{"tasks": ["alive"], "ended": 5}')
    with pytest.raises(CheckpointError, match="moses_tasks.json: expected"):
        MoSEsModel.from_pretrained(load_model(tiny_model_dir)[0], adapter)
