"""The agreement task, except that scoring raises KeyboardInterrupt: Ctrl-C pressed while the
first evaluation runs."""

from __future__ import annotations

from agreement_task import AgreementTask


class InterruptedAgreementTask(AgreementTask):
    def evaluate(self, model, tokenizer=None, item_ids=None):
        raise KeyboardInterrupt
