"""The agreement task, answering wrongly in one way (`fault`): as a buggy plugin task might."""

from __future__ import annotations

import numpy as np
from agreement_task import AgreementTask


class FaultyAgreementTask(AgreementTask):
    def __init__(self, reference: str, fault: str, **settings):
        super().__init__(reference, **settings)
        self.fault = fault

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
        return scores
