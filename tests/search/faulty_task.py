"""The agreement task, answering wrongly in one way (`fault`): as a buggy plugin task might."""

from __future__ import annotations

import hashlib
import os

import numpy as np
from agreement_task import AgreementTask


class FaultyAgreementTask(AgreementTask):
    def __init__(self, reference: str, fault: str, failures: str | None = None, **settings):
        super().__init__(reference, **settings)
        self.fault, self.failures = fault, failures  # failures: a file each raise adds a line to

    def evaluate(self, model, tokenizer=None, item_ids=None):
        scores = super().evaluate(model, tokenizer, item_ids)
        if self.fault == "extra":
            scores["not-an-item"] = 1.0
        elif self.fault == "missing":
            scores = scores.iloc[:-1]
        elif self.fault == "nan":
            scores.iloc[0] = np.nan
        elif self.fault == "range":
            scores = scores * 5
        elif self.fault == "list":  # the scores, not the Series the protocol asks for
            scores = list(scores)
        elif self.fault == "zeros":  # valid scores of a task broken for these models (answers read as <unk>)
            scores = scores * 0.0
        elif self.fault == "none":
            scores = scores.astype(object)
            scores.iloc[1] = None
        elif self.fault == "once" and not os.path.exists(self.failures):  # a transient fault (out of memory)
            with open(self.failures, "w") as log:
                log.write("failed\n")
            raise RuntimeError("scorer failed once")
        elif self.fault == "held-out" and len(scores) == 17 and not os.path.exists(self.failures):  # a bad held-out
            raise RuntimeError("Context is not a string")  # row, until fixed (`failures`: a file that says so)
        elif self.fault in ("race", "picks", "anchors") and self._fails_on(model, len(scores)):
            if self.failures:
                with open(self.failures, "a") as log:
                    log.write("failed\n")
            raise RuntimeError("scorer blew up on this model")
        return scores

    def _fails_on(self, model, n_items: int) -> bool:
        """Half the models fail (by their weights), and only on some item counts: the race's samples
        (`race`: 11-30 items), a pick's rest (`picks`: 31 to all but one), or anything short of every
        item (`anchors`: a search candidate, never a calibration subject)."""
        short = len(self._ids) - 1
        low, high = {"race": (10, 30), "picks": (30, short), "anchors": (0, short)}[self.fault]
        weights = next(model.parameters()).detach().float().numpy().tobytes()
        return low < n_items <= high and hashlib.sha256(weights).digest()[0] % 2 == 0
