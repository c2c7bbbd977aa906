"""lm-eval model type `evo-merge-mass`: importing this module registers it.

    import evo_merge.mass.lmeval
    lm_eval.simple_evaluate(model="evo-merge-mass", model_args="path=MASS_FOLDER", tasks=[...])

It is lm-eval's HF wrapper around a loaded `MassModel` (which answers `forward`/`generate` like
an HF causal LM), so scores and per-item logs are exactly those of any HF model.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from evo_merge.mass.model import load_mass


@register_model("evo-merge-mass")
class MassLM(HFLM):
    def __init__(self, path: str, device: str | None = None, **kwargs: Any) -> None:
        model, tokenizer = load_mass(path, device=device)
        super().__init__(pretrained=model, tokenizer=tokenizer, **kwargs)
