"""The shipped synthetic task families, generated deterministically from a seed.

Three families with disjoint skills, so that a model fine-tuned on one is weak on the others
and a merge has something to combine:

- ``arith`` (multiple choice): add or subtract 1, add 10, add a digit to a number of 2-3
  digits (the choices differ in one digit, carries make items harder);
- ``lang`` (multiple choice): translation to and from a rule-made second language, a fixed
  word-for-word substitution of a small English vocabulary;
- ``seq`` (generation, exact match): copy, shift and reverse a letter string.

Each item has a scenario (a sub-skill of its own difficulty). The evaluation split is what
``scripts/make_benchmarks.py`` ships under ``benchmarks/``; the train split, used by the zoo,
never shares a question with it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Doc = dict[str, Any]

FAMILIES = ("arith", "lang", "seq")
SPLITS = ("train", "test")

ENGLISH = (
    "cat dog red big sun sky run eat old new hot cold man boy girl tree bird fish "
    "see sea good bad day night walk blue green small fast slow"
).split()
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def _make_lexicon(seed: int = 7) -> dict[str, str]:
    """English word -> a unique pseudo-word of consonant-vowel syllables (the second language)."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    taken: set[str] = set()
    for word in ENGLISH:
        while True:
            n_syll = 2 if len(word) <= 3 else 3
            pseudo = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n_syll))
            if pseudo not in taken:
                break
        taken.add(pseudo)
        out[word] = pseudo
    return out


LEXICON = _make_lexicon()


def _mc(question: str, answer: str, distractors: list[str], rng: random.Random) -> Doc:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(answer)}


def _distinct(answer: str, candidates: Iterator[str], k: int = 3) -> list[str]:
    out: list[str] = []
    for cand in candidates:
        if cand != answer and cand not in out:
            out.append(cand)
        if len(out) == k:
            return out
    raise RuntimeError("distractor generator ran dry")  # pragma: no cover


_ARITH = {  # scenario -> (operator, second operand or None for a random digit, distractor offsets)
    "inc": ("+", 1, (-2, -1, 1, 2)),
    "dec": ("-", 1, (-2, -1, 1, 2)),
    "add_10": ("+", 10, (-20, -10, 10, 20)),
    "add_1d": ("+", None, (-2, -1, 1, 2)),
}


def _arith(scenario: str, rng: random.Random) -> Doc:
    op, b, offsets = _ARITH[scenario]
    a = rng.randint(10, 999)
    b = rng.randint(2, 9) if b is None else b
    value = a + b if op == "+" else a - b

    def near() -> Iterator[str]:
        while True:
            yield str(value + rng.choice(offsets))

    return _mc(f"{a}{op}{b}=", str(value), _distinct(str(value), near()), rng)


def _lang(scenario: str, rng: random.Random) -> Doc:
    direction, n_words = scenario.split("_")
    words = [rng.choice(ENGLISH) for _ in range(int(n_words[0]))]
    if direction == "en2xx":
        source, tgt, vocab = words, [LEXICON[w] for w in words], list(LEXICON.values())
    else:
        source, tgt, vocab = [LEXICON[w] for w in words], words, ENGLISH

    def corrupt() -> Iterator[str]:  # one word wrong: the model must know every word
        while True:
            wrong = list(tgt)
            wrong[rng.randrange(len(wrong))] = rng.choice(vocab)
            yield " ".join(wrong)

    answer = " ".join(tgt)
    prefix = "en>xx" if direction == "en2xx" else "xx>en"
    return _mc(f"{prefix} {' '.join(source)} =", answer, _distinct(answer, corrupt()), rng)


SEQ_ALPHABET = "abcdefghij"
SEQ_OPS: dict[str, Callable[[str], str]] = {
    "copy": lambda s: s,
    "shift": lambda s: "".join(SEQ_ALPHABET[(SEQ_ALPHABET.index(c) + 1) % 10] for c in s),
    "rev": lambda s: s[::-1],
}


def _seq(scenario: str, rng: random.Random) -> Doc:
    op, length = scenario.split("_")
    s = "".join(rng.choice(SEQ_ALPHABET) for _ in range(int(length)))
    return {"question": f"{op} {s}=", "answer": SEQ_OPS[op](s)}


SCENARIOS: dict[str, tuple[str, ...]] = {
    "arith": ("inc", "dec", "add_10", "add_1d"),
    "lang": ("en2xx_2w", "xx2en_2w", "en2xx_3w", "xx2en_3w"),
    "seq": ("copy_3", "copy_5", "shift_3", "rev_3", "rev_5"),
}
_MAKERS: dict[str, Callable[[str, random.Random], Doc]] = {"arith": _arith, "lang": _lang, "seq": _seq}


def _in_split(question: str, split: str) -> bool:
    """A fixed hash of the question decides its split, so splits never share a question."""
    h = sum((i + 1) * ord(c) for i, c in enumerate(question)) % 5
    return (h == 0) == (split == "test")


def make_items(family: str, split: str, n: int, seed: int = 0) -> list[Doc]:
    """`n` distinct items of one family and split, scenarios in turn, each with a stable id.

    A scenario with fewer distinct questions than its share yields fewer items; the others
    fill the gap.
    """
    if family not in _MAKERS or split not in SPLITS:
        raise ValueError(f"unknown family/split {family!r}/{split!r}")
    rng = random.Random(f"{family}-{split}-{seed}")
    seen: set[str] = set()
    docs: list[Doc] = []
    scenarios = list(SCENARIOS[family])
    misses = dict.fromkeys(scenarios, 0)
    while len(docs) < n and scenarios:
        scenario = scenarios[len(docs) % len(scenarios)]
        doc = _MAKERS[family](scenario, rng)
        if doc["question"] in seen or not _in_split(doc["question"], split):
            misses[scenario] += 1
            if misses[scenario] > 2000:  # 2000 misses in a row: scenario exhausted
                scenarios.remove(scenario)
            continue
        misses[scenario] = 0
        seen.add(doc["question"])
        docs.append({"id": f"{family}-{split}-{len(docs):05d}", "scenario": scenario, **doc})
    return docs


def answer_text(doc: Doc) -> str:
    """The gold continuation of a doc (the correct choice, or the generation target)."""
    return doc["choices"][doc["answer"]] if "choices" in doc else doc["answer"]


def training_text(doc: Doc) -> str:
    """One line a causal LM is trained on: the prompt as lm-eval shows it, then the answer."""
    return f"{doc['question']} {answer_text(doc)}\n"


N_TEST = 1200
_YAML_HEAD = """\
# Generated by scripts/make_benchmarks.py; do not edit by hand.
task: evo_{family}
dataset_path: json
dataset_kwargs:
  data_files:
    test: test.jsonl
test_split: test
doc_to_text: question
"""
_YAML_MC = """\
output_type: multiple_choice
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
_YAML_GEN = """\
output_type: generate_until
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: strip
    filter:
      - function: regex
        regex_pattern: "(\\\\S+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_benchmark(family: str, root: Path, n: int = N_TEST) -> Path:
    """Write one family's evaluation split and its lm-eval task YAML; return the YAML path."""
    folder = Path(root) / family
    folder.mkdir(parents=True, exist_ok=True)
    docs = make_items(family, "test", n)
    (folder / "test.jsonl").write_text("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in docs))
    body = _YAML_MC if "choices" in docs[0] else _YAML_GEN
    path = folder / f"evo_{family}.yaml"
    path.write_text(_YAML_HEAD.format(family=family) + body)
    return path
