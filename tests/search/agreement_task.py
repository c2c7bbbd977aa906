"""A cheap, real fitness task for campaign tests: does a model's next token agree with a reference's?

Items are fixed random token sequences; item i is right when the model's greedy next token
equals the reference model's. With one reference per endpoint, each endpoint is strong on its
own task and merges trade the tasks off — the structure a search needs, in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from evo_merge.tasks.base import item_positions, score_series


class AgreementTask:
    def __init__(self, reference: str, name: str = "agree", n_items: int = 120, seq_len: int = 6, seed: int = 0,
                 delay: float = 0.0, broken: Sequence[str] = (), **_settings):
        self.name, self.delay, self.broken = name, delay, frozenset(broken)  # `broken`: items whose scorer raises
        ref = AutoModelForCausalLM.from_pretrained(reference).eval()
        gen = torch.Generator().manual_seed(seed)
        self.inputs = torch.randint(4, ref.config.vocab_size, (n_items, seq_len), generator=gen)
        with torch.no_grad():
            self.targets = ref(self.inputs).logits[:, -1].argmax(-1)
        self._ids = [f"{name}-{i:04d}" for i in range(n_items)]
        self._index = {item: i for i, item in enumerate(self._ids)}

    @property
    def item_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def scenarios(self) -> dict[str, str] | None:
        return {item: ("even" if i % 2 == 0 else "odd") for i, item in enumerate(self._ids)}

    @torch.no_grad()
    def evaluate(self, model, tokenizer=None, item_ids: Sequence[str] | None = None) -> pd.Series:
        positions = item_positions(self.name, self._index, item_ids)
        if crashed := sorted(self.broken & {self._ids[p] for p in positions}):
            raise RuntimeError(f"the scorer crashed on {crashed[0]}")
        time.sleep(self.delay)  # lets a test kill the campaign mid-generation
        logits = model(self.inputs[positions]).logits[:, -1]
        correct = (logits.argmax(-1) == self.targets[positions]).float()
        return score_series(self.name, [self._ids[p] for p in positions], correct.tolist())
