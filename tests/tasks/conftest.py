import pytest

from evo_merge.zoo.tiny import make_tiny_causal_lm
from evo_merge.zoo.tokenizer import build_char_tokenizer


@pytest.fixture(scope="session")
def char_lm():
    """A small random Llama LM and its char tokenizer (scores are near chance, but exact)."""
    tokenizer = build_char_tokenizer()
    return make_tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=32, layers=2, seed=3), tokenizer
