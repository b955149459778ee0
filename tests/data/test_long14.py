"""LONG-14 and folder benchmarks: order, families, the split a run scores, prompt cutting, label budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from moses.data.collate import answer_token_budget, cut_prompt, encode_example, generation_batch
from moses.data.folders import HELD_OUT_SHARE
from moses.data.long14 import LONG14_FAMILIES, LONG14_ORDER, family_of, load_long14
from moses.data.stream import Task, load_manifest
from moses.data.trace import load_trace
from moses.errors import DataError

LONG14_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "long14"


def write_split(folder: Path, split: str, n: int, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    examples = [{"prompt": f"{folder.name} {split} {i}\nAnswer:", "answer": tag} for i in range(n)]
    (folder / f"{split}.json").write_text(json.dumps(examples))


def fake_long14(root: Path) -> Path:
    for name in LONG14_ORDER:
        write_split(root / name, "train", 6, "True")
        write_split(root / name, "eval", 4, "False")
        write_split(root / name, "test", 5, "Science or Technology")
    return root


def test_families_partition_the_order():
    members = [t for names in LONG14_FAMILIES.values() for t in names]
    assert sorted(members) == sorted(LONG14_ORDER) and len(members) == len(set(members)) == 14
    assert family_of("IMDB") == "sentiment" and family_of("nope") is None


def test_long14_scores_test_by_default_and_eval_when_asked(tmp_path):
    root = fake_long14(tmp_path)
    stream = load_long14(root, n_train=3)
    assert [t.name for t in stream] == list(LONG14_ORDER)
    assert all(t.metric == "exact_match" and t.max_new_tokens is None for t in stream)
    assert [e["prompt"] for e in stream[0].train] == [f"yelp train {i}\nAnswer:" for i in range(3)]
    assert all("test" in e["prompt"] for e in stream[0].test) and len(stream[0].test) == 5
    on_eval = load_long14(root, tasks=["WiC", "CB"], n_test=3, split="eval")
    assert [t.name for t in on_eval] == ["WiC", "CB"]
    assert [e["prompt"] for e in on_eval[0].test] == [f"WiC eval {i}\nAnswer:" for i in range(3)]
    assert on_eval[0].train == load_long14(root, tasks=["WiC"])[0].train  # choosing trains what reporting does


def test_long14_errors(tmp_path):
    with pytest.raises(DataError, match="LONG-14 data directory not found"):
        load_long14(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown LONG-14 task"):
        load_long14(fake_long14(tmp_path), tasks=["yahoo"])
    with pytest.raises(DataError, match="split 'valid'"):
        load_long14(tmp_path, split="valid")
    (tmp_path / "CB" / "eval.json").unlink()
    with pytest.raises(DataError, match="CB/eval.json: file not found"):
        load_long14(tmp_path, tasks=["CB"], split="eval")


def test_a_task_trained_on_its_eval_split_holds_out_a_quarter_to_score(tmp_path):
    """TRACE's MeetingBank has no train split: an eval-split run trains on the first three quarters of its
    eval examples and scores the rest, never an example it trained on."""
    write_split(tmp_path / "MeetingBank", "eval", 20, "summary")
    write_split(tmp_path / "MeetingBank", "test", 7, "summary")
    with pytest.warns(UserWarning, match="training on eval.json"):
        (reported,) = load_trace(tmp_path, tasks=["MeetingBank"], eval_as_train=True)
    with pytest.warns(UserWarning):
        (chosen,) = load_trace(tmp_path, tasks=["MeetingBank"], eval_as_train=True, split="eval")
    assert len(reported.train) == 20 and len(reported.test) == 7
    held = int(20 * HELD_OUT_SHARE)
    assert len(chosen.test) == held and len(chosen.train) == 20 - held
    assert not {e["prompt"] for e in chosen.train} & {e["prompt"] for e in chosen.test}


def test_manifest_split_and_auto_budget(tmp_path):
    for split in ("train", "eval", "test"):
        write_split(tmp_path / "a", split, 3, "yes")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("tasks:\n  - {name: a, train: a/train.json, test: a/test.json, eval: a/eval.json, "
                        "max_new_tokens: auto}\n  - {name: b, train: a/train.json, test: a/test.json}\n")
    with pytest.raises(DataError, match=r"tasks\[1\]: split 'eval' needs an 'eval' file"):
        load_manifest(manifest, split="eval")
    manifest.write_text("tasks:\n  - {name: a, train: a/train.json, test: a/test.json, eval: a/eval.json, "
                        "max_new_tokens: auto}\n")
    (task,) = load_manifest(manifest, split="eval")
    assert task.max_new_tokens is None and all("eval" in e["prompt"] for e in task.test)


def test_cut_prompt_keeps_both_ends():
    ids = list(range(100))
    assert cut_prompt(ids, 100) == ids
    kept = cut_prompt(ids, 10)
    assert kept == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert cut_prompt(ids, 11) == [0, 1, 2, 3, 4, 94, 95, 96, 97, 98, 99]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_long_passage_keeps_instruction_options_and_answer_cue(tokenizer):
    """Training and generation cut a long prompt the same way: the passage loses its middle, while the
    instruction, the options and the question with its "Answer:" cue survive."""
    head = "What is the sentiment of the following paragraph? Choose one from the option.\nOption: Good, Bad \n"
    tail = "\nquestion: is it alive?\nAnswer:"
    prompt = head + "coin pin button needle " * 200 + tail
    limit = 2 * len(tokenizer(head + "x", add_special_tokens=False)["input_ids"]) + 8
    ids, labels = encode_example(tokenizer, {"prompt": prompt, "answer": " Good"}, limit, 8)
    prompt_ids = [i for i, label in zip(ids, labels, strict=True) if label == -100]
    text = tokenizer.decode(prompt_ids)
    assert len(prompt_ids) == limit and text.startswith(head) and text.endswith(tail)
    generated = generation_batch(tokenizer, [prompt], limit)["input_ids"][0].tolist()
    assert generated == prompt_ids


def test_answer_budget_is_the_longest_label(tokenizer):
    examples = [{"prompt": "p", "answer": a} for a in ("yes", "no", "Science or Technology")]
    task = Task("t", examples[:2], examples[2:], max_new_tokens=None)
    longest = len(tokenizer("Science or Technology", add_special_tokens=False)["input_ids"])
    assert answer_token_budget(tokenizer, task) == longest > 1
    assert answer_token_budget(tokenizer, Task("t", examples, examples, max_new_tokens=5)) == 5


@pytest.mark.skipif(not LONG14_DIR.is_dir(), reason=f"LONG-14 data not found at {LONG14_DIR}")
def test_the_stored_long14():
    stream = load_long14(LONG14_DIR)
    assert [t.name for t in stream] == list(LONG14_ORDER)
    assert sum(len(t.test) for t in stream) == 2556
    assert all(len(t.eval) == 100 for t in stream)
    for task in stream:
        prompts = {e["prompt"] for e in task.train}
        assert not prompts & {e["prompt"] for e in task.eval}, task.name


@pytest.mark.skipif(not LONG14_DIR.is_dir(), reason=f"LONG-14 data not found at {LONG14_DIR}")
@pytest.mark.parametrize("name,tasks", [("long14.yaml", 14), ("long14_proxy.yaml", 4)])
def test_the_shipped_long14_configs_load(name, tasks):
    from moses.runner.config import RunConfig
    from moses.runner.run import build_stream

    config = RunConfig.from_file(Path(__file__).resolve().parents[2] / "benchmarks" / name)
    assert config.stream == "long14" and config.precision == "bf16" and config.split == "test"
    assert len(build_stream(config)) == tasks
