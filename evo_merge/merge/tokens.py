"""Merging models whose vocabularies differ: the output tokenizer and embedding rows (mergekit's rules).

`tokenizer_source` (or `tokenizer.source`) is `base` (the base's tokenizer; the first model's
without a base), `union` (the base's, plus every other token of the models: regular tokens in
model order, then added tokens, each model's in id order), or a model reference (`model:X` or X).
Before merging, each model's embedding and LM-head rows are laid out in the output vocabulary.
A token a model lacks gets, in this order: the row `tokenizer.tokens` names; the one model's row
if only one has it; the base's row if the base has it; the mean of the rows of the models that
have it; zeros if none. `force` replaces even rows a model has. Rows padded up to
`pad_to_multiple_of` get the mean row. `chat_template` (a Jinja string, a named format such as
`chatml`, or `auto`: the template most models share) is set on the written tokenizer.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evo_merge.errors import UserError, first_line
from evo_merge.merge import layers
from evo_merge.merge.chat_templates import chat_template_text
from evo_merge.merge.recipe import ModelTokenEmbedding, Recipe, ZeroEmbedding
from evo_merge.weights import Checkpoint
from evo_merge.weights.arch import OUTPUT_HEADS, TOKEN_EMBEDDINGS, module_named
from evo_merge.weights.checkpoint import copied_tokenizer_files
from evo_merge.weights.references import ModelRef, resolve_reference

_VOCABULARY = module_named(TOKEN_EMBEDDINGS | OUTPUT_HEADS)  # a row per token
# what chat templates write as turn markers: `<|im_start|>`, `<|eot_id|>` (a token where an input has it so)
_TEMPLATE_TOKEN = re.compile(r"<\|[^|\s<>'\"+]{1,48}\|>")

log = logging.getLogger(__name__)


@dataclass
class TokenPlan:
    """The output vocabulary and, per model, where each output token's row is in its embeddings."""

    vocab: dict[str, int]
    rows: int  # output rows (the vocabulary padded to pad_to_multiple_of)
    positions: dict[int, dict[str, int]]  # model -> token -> its row (tokens it has, below its row count)
    base: int | None
    tokens: dict[str, Any] = field(default_factory=dict)  # token -> TokenEmbedding from the recipe
    sources: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # token -> (model, row); None: zeros
    files: dict[str, bytes] = field(default_factory=dict)  # tokenizer files to write
    model_rows: set[int] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)  # tokenizer references outside the merge -> resolved

    def is_embedding(self, name: str, shape: tuple[int, ...]) -> bool:
        return len(shape) == 2 and shape[0] in self.model_rows and is_vocabulary(name)

    def permute(self, sources: list[tuple[int, str]], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each source's rows laid out in the output vocabulary: the rows a model has, gathered in
        one indexing per model (a row at a time took 2.2 s for a 152k vocabulary, twice a merge);
        the default rows (`_default`) only for the tokens some model lacks or `force` replaces."""
        models = [m for m, _ in sources]
        by_model = dict(zip(models, tensors))
        defaults: dict[str, torch.Tensor | None] = {}
        out = []
        for m, tensor in zip(models, tensors):
            rows = torch.zeros(self.rows, tensor.shape[1], dtype=tensor.dtype)
            have = self.positions[m]
            own, at, others = [], [], []
            for tok, i in self.vocab.items():
                if tok in have and not (tok in self.tokens and self.tokens[tok].force):
                    own.append(i)
                    at.append(have[tok])
                else:
                    others.append((tok, i))
            if own:
                rows[torch.tensor(own)] = tensor[torch.tensor(at)]
            for tok, i in others:
                if tok not in defaults:
                    defaults[tok] = self._default(tok, models, by_model)
                if defaults[tok] is not None:
                    rows[i] = defaults[tok]
            if self.rows > len(self.vocab):
                rows[len(self.vocab):] = rows[:len(self.vocab)].mean(dim=0)
            out.append(rows)
        return out

    def _default(self, tok: str, models: list[int], by_model: dict[int, torch.Tensor]) -> torch.Tensor | None:
        have = [m for m in models if tok in self.positions[m]]
        if tok in self.sources:
            return self._configured(tok, by_model)
        if len(have) == 1:
            return by_model[have[0]][self.positions[have[0]][tok]]
        if not have:
            return torch.zeros(next(iter(by_model.values())).shape[1])
        if self.base in have:
            return by_model[self.base][self.positions[self.base][tok]]
        return torch.stack([by_model[m][self.positions[m][tok]] for m in have]).mean(dim=0)

    def _configured(self, tok: str, by_model: dict[int, torch.Tensor]) -> torch.Tensor:
        """The row `tokenizer.tokens` names, resolved and checked when the plan was made."""
        source = self.sources[tok]
        if source is None:
            return torch.zeros(next(iter(by_model.values())).shape[1])
        model, row = source
        if model not in by_model:
            raise UserError(f"tokenizer.tokens.{tok}.source: its model is not merged into this tensor")
        return by_model[model][row]

    def check_job(self, name: str, models: list[int], refs: list[ModelRef]) -> None:
        """A token's configured source model must be among those merged into each embedding
        tensor (with slices, a model may be left out of the first or last slice)."""
        for tok, source in self.sources.items():
            if source is not None and source[0] not in models:
                raise UserError(f"tokenizer.tokens.{tok}.source: {refs[source[0]].name} is not one of the "
                                f"models merged into {name}")


def is_vocabulary(name: str) -> bool:
    """Whether a tensor has a row per token (an input embedding or an output head), by its name."""
    return layers.parse(name) is None and bool(_VOCABULARY.search(name))


def _tokenizer(folder: Path | None, what: str):
    from transformers import AutoTokenizer

    if folder is None:
        raise UserError(f"{what}: no tokenizer (a bare weights file)")
    copied_tokenizer_files(folder)  # a link out of the model is refused before transformers reads (and re-saves) it
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001  transformers raises many kinds for unreadable folders
        raise UserError(f"{what}: cannot load its tokenizer ({first_line(err)})") from None


def _union(base_tok, others: list) -> Any:
    """The base tokenizer plus every token of the others it lacks (regular first, then added)."""
    have = set(base_tok.get_vocab())
    regular, added = [], {}
    for tok in others:
        special = {t.content: t for t in tok.added_tokens_decoder.values()}
        for text, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if text in special:
                added.setdefault(text, special[text])
            elif text not in have and text not in regular:
                regular.append(text)
    for text in regular:
        base_tok.add_tokens(text)
    for text, info in added.items():
        if text not in have:
            base_tok.add_tokens(info)
    return base_tok


def _chat_template(recipe: Recipe, tokenizers: list) -> str | None:
    template = chat_template_text(recipe.chat_template)  # the recipe checked it
    if template != "auto":
        return template
    found = [t.chat_template.strip() for t in tokenizers if isinstance(t.chat_template, str) and t.chat_template]
    return Counter(found).most_common(1)[0][0] if found else None


def _warn_missing_template_tokens(template: Any, vocab: dict[str, int], tokenizers: list) -> None:
    """A chat template whose turn markers an input has as tokens but the output vocabulary lacks
    (`auto` taking a chat fine-tune's template while the tokens come from the base) renders prompts
    the model reads as ordinary text pieces, or `<unk>`: written as asked, and said (audit 137). A
    marker no input has as a token is text by design (Zephyr's `<|user|>`, Qwen2.5's `<tools>`), and
    not said (audit 139)."""
    if not isinstance(template, str):  # or a dict of templates
        return
    vocabularies = [tokenizer.get_vocab() for tokenizer in tokenizers]
    candidates = {*_TEMPLATE_TOKEN.findall(template),
                  *(token for tokenizer in tokenizers for token in tokenizer.get_added_vocab() if token in template)}
    missing = sorted(t for t in candidates if t not in vocab and any(t in known for known in vocabularies))
    if missing:
        log.warning(f"chat_template: its special tokens {', '.join(missing)} are not in the output tokenizer's "
                    "vocabulary, though an input has them, so prompts in this format are split into ordinary "
                    "pieces; take the tokenizer from a model that has them (tokenizer_source: union, or model:NAME)")


def plan_tokens(recipe: Recipe, refs: list[ModelRef], index: dict[str, int], checkpoints: list[Checkpoint],
                donor: int, root: Path = Path(".")) -> TokenPlan | None:
    """The token plan, or None when the recipe asks for no tokenizer work (files are copied as is).

    References (the tokenizer source, token sources) are resolved as models are: against `root`,
    the recipe's folder, so a recipe merges the same from any working directory."""
    spec = recipe.tokenizer
    source = spec.source if spec is not None else recipe.tokenizer_source
    if source is None and recipe.chat_template is None:
        return None
    source = source or "base"
    tokenizers = [_tokenizer(c.folder, r.name) for c, r in zip(checkpoints, refs)]
    positions, model_rows, n_rows = {}, set(), []  # before the output tokenizer is built from (and changes) one
    for m, (tok, ckpt) in enumerate(zip(tokenizers, checkpoints)):
        n_rows.append(int((ckpt.config or {}).get("vocab_size") or len(tok)))
        model_rows.add(n_rows[m])
        positions[m] = {t: i for t, i in tok.get_vocab().items() if i < n_rows[m]}
    names: dict[str, str] = {}
    if source == "base":
        out = tokenizers[donor]
    elif source == "union":
        out = _union(tokenizers[donor], [t for i, t in enumerate(tokenizers) if i != donor])
    else:
        name = source.removeprefix("model:")
        key = "tokenizer.source" if spec is not None else "tokenizer_source"
        ref = refs[index[name]] if name in index else resolve_reference(name, root, key)
        names[name] = ref.name
        out = _tokenizer(ref.path, key)
    tokens = dict(spec.tokens or {}) if spec is not None else {}
    merged = _Merged(refs, index, root, names)
    sources = {tok: _token_source(tok, t.source, merged, positions, n_rows)
               for tok, t in tokens.items() if t.source is not None}
    for text in tokens:
        out.add_tokens(text)
    out.chat_template = _chat_template(recipe, tokenizers) or out.chat_template
    vocab = dict(sorted(out.get_vocab().items(), key=lambda kv: kv[1]))
    if recipe.chat_template is not None:
        _warn_missing_template_tokens(out.chat_template, vocab, tokenizers)
    pad = spec.pad_to_multiple_of if spec is not None else None
    rows = len(vocab) if not pad else -(-len(vocab) // pad) * pad
    return TokenPlan(vocab, rows, positions, donor if recipe.base_model else None, tokens, sources, _saved(out),
                     model_rows, names)


def _token_source(tok: str, source: Any, merged: _Merged, positions: dict[int, dict[str, int]],
                  n_rows: list[int]) -> tuple[int, int] | None:
    """(model, row) of a `tokenizer.tokens` source, checked before any weights are read: the model
    is one of the merge's and the token or row is in its embeddings (None: zeros)."""
    if isinstance(source, ZeroEmbedding):
        return None
    key = f"tokenizer.tokens.{tok}.source"
    model_ref = source.model if isinstance(source, ModelTokenEmbedding) else source
    model = merged.find(model_ref, key)
    if isinstance(source, ModelTokenEmbedding) and source.token_id is not None:
        if not 0 <= source.token_id < n_rows[model]:
            raise UserError(f"{key}: token_id {source.token_id} is outside the {n_rows[model]} embedding rows "
                            f"of {model_ref}")
        return model, source.token_id
    src_tok = source.token if isinstance(source, ModelTokenEmbedding) else tok
    if src_tok not in positions[model]:
        raise UserError(f"{key}: token {src_tok!r} is not in {model_ref}")
    return model, positions[model][src_tok]


@dataclass
class _Merged:
    """The merge's models, found by any spelling of their reference; each new spelling is
    recorded with its resolved name, for the recipe the merge saves."""

    refs: list[ModelRef]
    index: dict[str, int]
    root: Path
    names: dict[str, str]

    def find(self, value: str, key: str) -> int:
        if value in self.index:
            return self.index[value]
        name = resolve_reference(value, self.root, key).name
        for i, ref in enumerate(self.refs):
            if ref.name == name:
                self.names[value] = name
                return i
        raise UserError(f"{key}: {value!r} is not one of the merged models")


def _saved(tokenizer) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
