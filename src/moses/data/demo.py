"""The embedded demo stream: small word-classification tasks generated in code, so the demo needs no files.

Both tasks label the same kind of items with the same answers (A / B) by different rules: whether the
item is alive, then whether it is big. A model fine-tuned on the second task answers the first task's
prompts by the second rule, so sequential fine-tuning visibly forgets; with a task id MoSEs does not.
"""

from __future__ import annotations

import random

from moses.data.stream import Example, Task

# (alive, big) -> items; every quadrant the same size so each task is balanced (chance = 50).
ITEMS: dict[tuple[bool, bool], list[str]] = {
    (True, True): ["elephant", "whale", "giraffe", "horse", "cow", "bear", "camel", "oak", "hippo", "rhinoceros",
                   "moose", "buffalo", "shark", "gorilla", "lion", "tiger", "zebra", "pine", "redwood", "dolphin",
                   "crocodile", "ostrich"],
    (True, False): ["ant", "bee", "mouse", "fly", "flea", "spider", "snail", "worm", "moss", "ladybug", "mosquito",
                    "sparrow", "frog", "hamster", "beetle", "clover", "daisy", "butterfly", "lizard", "shrimp",
                    "tick", "gnat"],
    (False, True): ["truck", "house", "ship", "airplane", "bridge", "tower", "bus", "train", "building", "castle",
                    "tractor", "crane", "stadium", "skyscraper", "barn", "submarine", "warehouse", "cathedral",
                    "rocket", "yacht", "lighthouse", "factory"],
    (False, False): ["coin", "pin", "button", "needle", "key", "ring", "pebble", "marble", "bead", "stamp",
                     "thimble", "paperclip", "eraser", "dice", "screw", "nail", "earring", "battery", "spoon",
                     "pencil", "whistle", "thumbtack"],
}
RULES = {"alive": ("Alive check.", 0), "size": ("Size check.", 1)}  # name -> (prompt header, attribute)


def demo_task(name: str, n_train: int = 64, n_test: int = 24, seed: int = 0) -> Task:
    header, attribute = RULES[name]
    rng = random.Random(f"{name}:{seed}")
    per_quadrant = n_test // len(ITEMS)
    train_items, test_items = [], []
    for key, items in ITEMS.items():
        items = items[:]
        rng.shuffle(items)
        test_items += [(item, key[attribute]) for item in items[:per_quadrant]]
        train_items += [(item, key[attribute]) for item in items[per_quadrant:]]
    rng.shuffle(train_items)
    rng.shuffle(test_items)

    def example(item: str, label: bool) -> Example:
        return {"prompt": f"{header}\nItem: {item}\nLabel:", "answer": " yes" if label else " no"}

    train = [example(*train_items[i % len(train_items)]) for i in range(n_train)]
    return Task(name=name, train=train, test=[example(*t) for t in test_items], metric="exact_match",
                max_new_tokens=2)


def demo_stream(n_train: int = 64, n_test: int = 24, seed: int = 0) -> list[Task]:
    """The default stream of `moses demo`: alive (A = alive), then size (A = big)."""
    return [demo_task(name, n_train, n_test, seed) for name in RULES]
