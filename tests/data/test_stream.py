"""Task streams: TRACE layout, manifests, the embedded demo stream, and malformed input."""

import json
from pathlib import Path

import pytest

from moses.data.collate import IGNORE, generation_batch, training_batch
from moses.data.demo import demo_stream
from moses.data.stream import load_manifest, read_examples
from moses.data.trace import TRACE_ORDER, load_trace, sari_source
from moses.errors import DataError

TRACE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "trace500"


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def examples(n: int, tag: str = "") -> list[dict]:
    return [{"prompt": f"{tag}q{i}", "answer": f"a{i}"} for i in range(n)]


def test_demo_stream_is_deterministic_balanced_and_conflicting():
    first, again = demo_stream(), demo_stream()
    assert [t.train for t in first] == [t.train for t in again]
    alive, size = first
    assert len(alive.train) == 64 and len(alive.test) == 24
    for task in first:
        answers = [e["answer"] for e in task.test]
        assert answers.count(" yes") == answers.count(" no") == 12
        assert not {e["prompt"] for e in task.test} & {e["prompt"] for e in task.train}
    item = lambda e: e["prompt"].split("Item: ")[1]  # noqa: E731
    alive_answer = {item(e): e["answer"] for e in alive.train + alive.test}
    size_answer = {item(e): e["answer"] for e in size.train + size.test}
    shared = set(alive_answer) & set(size_answer)
    assert sum(alive_answer[i] != size_answer[i] for i in shared) >= len(shared) // 3  # the rules conflict


def test_read_examples_json_and_jsonl(tmp_path):
    assert read_examples(write(tmp_path / "a.json", examples(3))) == examples(3)
    jsonl = write(tmp_path / "a.jsonl", "\n".join(json.dumps(e) for e in examples(2)) + "\n\n")
    assert read_examples(jsonl) == examples(2)


@pytest.mark.parametrize("name,content,message", [
    ("bad.json", '[{"prompt": "x", "answer": "y"},\n {"prompt": }]', "bad.json: malformed JSON at line 2 column"),
    ("bad.jsonl", '{"prompt": "x", "answer": "y"}\n{oops}\n', "bad.jsonl: malformed JSON on line 2"),
    ("obj.json", '{"prompt": "x"}', "expected a JSON list"),
    ("missing.json", '[{"prompt": "x"}]', "item 0 has no field 'answer'"),
    ("type.json", '[{"prompt": "x", "answer": 3}]', "item 0 field 'answer' is not a string"),
    ("empty.json", "[]", "empty.json: holds no examples"),
    ("empty.jsonl", "\n\n", "empty.jsonl: holds no examples"),
    ("blank.json", '[{"prompt": "x", "answer": "y"}, {"prompt": "", "answer": ""}]', "item 1 field 'prompt' is empty"),
    ("space.jsonl", '{"prompt": "x", "answer": " \\n "}\n', "item 0 field 'answer' is empty"),
])
def test_malformed_files_name_file_and_place(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        read_examples(write(tmp_path / name, content))


def fake_trace(root: Path, with_train: bool = True) -> Path:
    for name in TRACE_ORDER:
        if with_train or name != "MeetingBank":
            write(root / name / "train.json", examples(10, name))
        write(root / name / "eval.json", examples(5, name + "-eval"))
        write(root / name / "test.json", examples(6, name + "-test"))
    return root


def test_trace_loader_order_caps_and_metrics(tmp_path):
    stream = load_trace(fake_trace(tmp_path), n_train=4, n_test=3)
    assert [t.name for t in stream] == list(TRACE_ORDER)
    assert all(len(t.train) == 4 and len(t.test) == 3 for t in stream)
    assert stream[0].train[0]["prompt"] == "C-STANCEq0"  # the first examples, in file order
    metrics = {t.name: (t.metric, t.max_new_tokens) for t in stream}
    assert metrics["Py150"] == ("edit_similarity", 32) and metrics["20Minuten"] == ("sari", 64)
    assert metrics["ScienceQA"] == ("first_char_accuracy", 4)


def test_trace_missing_train_split_needs_the_flag(tmp_path):
    root = fake_trace(tmp_path, with_train=False)
    with pytest.raises(DataError, match="MeetingBank/train.json: file not found"):
        load_trace(root)
    with pytest.warns(UserWarning, match="MeetingBank: no train.json"):
        stream = load_trace(root, tasks=["MeetingBank", "FOMC"], eval_as_train=True)
    assert stream[0].train == examples(5, "MeetingBank-eval") and stream[1].name == "FOMC"


def test_trace_errors(tmp_path):
    with pytest.raises(DataError, match="TRACE data directory not found"):
        load_trace(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown TRACE task\\(s\\) Nope"):
        load_trace(fake_trace(tmp_path), tasks=["FOMC", "Nope"])


def test_sari_source_extracts_the_paragraph():
    prompt = ("Provide a simplified version of the following paragraph in German.\n\nParagraph:\nDer Text.\n\n"
              "Simplification:")
    assert sari_source(prompt) == "Der Text."


@pytest.mark.skipif(not TRACE_DIR.is_dir(), reason=f"TRACE-500 data not found at {TRACE_DIR}")
def test_real_trace500_loads():
    with pytest.warns(UserWarning, match="MeetingBank"):
        stream = load_trace(TRACE_DIR, n_train=64, n_test=32, eval_as_train=True)
    assert [t.name for t in stream] == list(TRACE_ORDER)
    assert all(len(t.train) == 64 and len(t.test) == 32 for t in stream)
    twenty = next(t for t in stream if t.name == "20Minuten")
    assert "Simplification:" not in sari_source(twenty.test[0]["prompt"])


def test_manifest_yaml(tmp_path):
    write(tmp_path / "data" / "a_train.jsonl", "\n".join(json.dumps(e) for e in examples(6)))
    write(tmp_path / "data" / "a_test.json", examples(4))
    manifest = write(tmp_path / "stream.yaml", "tasks:\n  - name: a\n    train: data/a_train.jsonl\n"
                     "    test: data/a_test.json\n    metric: rouge_l\n    max_new_tokens: 16\n    n_test: 2\n")
    (task,) = load_manifest(manifest, n_train=5)
    assert (task.name, len(task.train), len(task.test), task.metric, task.max_new_tokens) == ("a", 5, 2, "rouge_l", 16)


@pytest.mark.parametrize("content,message", [
    ("tasks: [", "malformed YAML at line"),
    ("tasks: []", "non-empty list under 'tasks'"),
    ("tasks:\n  - name: a\n    test: t.json\n", "tasks\\[0\\]: 'train' is required"),
    ("tasks:\n  - {name: a, train: t.json, test: t.json, metric: bleu}\n", "unknown metric 'bleu'"),
    ("tasks:\n  - {name: a, train: t.json, test: t.json, colour: red}\n", "unknown key\\(s\\) colour"),
    ("tasks:\n  - {name: a, train: nope.json, test: t.json}\n", "nope.json: file not found"),
])
def test_manifest_errors(tmp_path, content, message):
    write(tmp_path / "t.json", examples(2))
    with pytest.raises(DataError, match=message):
        load_manifest(write(tmp_path / "m.yaml", content))


class CharTokenizer:
    """A real-behaving minimal tokenizer (one id per character) for checking batch layout."""

    eos_token_id = pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_training_batch_masks_prompt_and_cuts_the_middle_of_a_long_prompt():
    batch = training_batch(CharTokenizer(), [{"prompt": "abcdef", "answer": "XY"}, {"prompt": "p", "answer": "Z"}],
                           max_prompt_tokens=3, max_answer_tokens=5)
    ids, labels, mask = batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    assert ids[0] == [ord(c) for c in "aefXY"] + [0]  # "bcd" cut: the start and the cue at the end kept; EOS
    assert labels[0] == [IGNORE] * 3 + [ord("X"), ord("Y"), 0]
    # left padding: every answer ends at the last position; positions count from the first real token
    assert labels[1] == [IGNORE] * 4 + [ord("Z"), 0] and mask[1] == [0, 0, 0, 1, 1, 1]
    assert batch["position_ids"].tolist()[1] == [0, 0, 0, 0, 1, 2]


def test_generation_batch_pads_on_the_left():
    batch = generation_batch(CharTokenizer(), ["abc", "z"], max_prompt_tokens=2)
    assert batch["input_ids"].tolist() == [[ord("a"), ord("c")], [0, ord("z")]]
    assert batch["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_answer_loss_equals_the_causal_lm_loss(tiny_model_dir):
    """The loop's loss (left padding, logits only where answers are) equals transformers' own loss on the
    same examples, right-padded, with labels."""
    import torch

    from moses.data.loss import answer_loss
    from moses.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    longer = {"prompt": "Item: x\nLabel:", "answer": " a much longer answer"}
    batch_examples = demo_stream(n_train=4)[0].train + [longer]
    batch = training_batch(tokenizer, batch_examples)
    loss, _ = answer_loss(model, batch)
    right = {"input_ids": [], "attention_mask": [], "labels": []}
    width = batch["input_ids"].shape[1]
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        n = int(mask.sum())
        pad = width - n
        right["input_ids"].append(torch.cat([ids[pad:], ids[:pad]]))
        right["attention_mask"].append(torch.cat([mask[pad:], mask[:pad]]))
        right["labels"].append(torch.cat([labels[pad:], labels[:pad]]))
    with torch.no_grad():
        reference = model(**{k: torch.stack(v) for k, v in right.items()}).loss
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-5)
