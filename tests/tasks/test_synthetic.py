"""The shipped benchmarks: regenerated identically, disjoint splits, answers right."""

import json
from collections import Counter

import pytest

from evo_merge.tasks.registry import BENCHMARKS_DIR
from evo_merge.tasks.synthetic import ENGLISH, FAMILIES, LEXICON, make_items, write_benchmark


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_files_are_what_the_generator_writes(family, tmp_path):
    write_benchmark(family, tmp_path)
    for name in (f"evo_{family}.yaml", "test.jsonl"):
        assert (tmp_path / family / name).read_bytes() == (BENCHMARKS_DIR / family / name).read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_items_are_many_with_scenarios_and_splits_disjoint(family):
    test = [json.loads(line) for line in (BENCHMARKS_DIR / family / "test.jsonl").read_text().splitlines()]
    train = make_items(family, "train", 3000)
    assert len(test) >= 1000 and len({d["id"] for d in test}) == len(test)
    counts = Counter(d["scenario"] for d in test)
    assert len(counts) >= 4 and min(counts.values()) >= 100
    assert not {d["question"] for d in test} & {d["question"] for d in train}


def _gold(doc):
    return doc["choices"][doc["answer"]] if "choices" in doc else doc["answer"]


def test_arith_answers_are_the_sums():
    for doc in make_items("arith", "test", 300):
        a, op, b = doc["question"].rstrip("=").partition("+" if "+" in doc["question"] else "-")
        assert int(_gold(doc)) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert len(set(doc["choices"])) == 4


def test_lang_answers_translate_word_by_word():
    inverse = {v: k for k, v in LEXICON.items()}
    assert len(inverse) == len(ENGLISH)  # the substitution is one-to-one
    for doc in make_items("lang", "test", 300):
        prefix, *source = doc["question"].rstrip(" =").split()
        table = LEXICON if prefix == "en>xx" else inverse
        assert _gold(doc) == " ".join(table[w] for w in source)


def test_seq_answers_follow_their_operation():
    for doc in make_items("seq", "test", 300):
        op, s = doc["question"].rstrip("=").split()
        expected = {"copy": s, "rev": s[::-1], "shift": "".join(chr((ord(c) - 97 + 1) % 10 + 97) for c in s)}[op]
        assert doc["answer"] == expected
