"""Builders shared by the tests: tiny random models, random token pairs with a corrupted span, the built-in model and its
pairs, a random-weight null model, and tiny stores. Import with `from helpers import ...` (pytest puts tests/ on the path)."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from actlab.patching import tiny_model  # noqa: F401  (re-exported: the tiny random model every patching test starts from)
from actlab.models import random_like  # noqa: F401  (re-exported: the null model for "this claim can fail")


def token_pair(model, b: int = 3, seq: int = 7, seed: int = 1, span: tuple[int, int] = (2, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    "Random clean tokens `[b, seq]` and a corrupted copy whose positions `span[0]:span[1]` are redrawn."
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (b, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, span[0]:span[1]] = torch.randint(0, model.cfg.d_vocab, (b, span[1] - span[0]), generator=g)
    return clean, corrupted


def toy_batch(model, b: int = 4, seq: int = 6, seed: int = 5, span: tuple[int, int] = (2, 5), answer_offset: int = 3,
              distractor_offset: int = 11) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    "`token_pair` plus answer and distractor ids `arange(b) + offset`: the 4 arguments of every per-example patching call."
    clean, corrupted = token_pair(model, b, seq, seed, span)
    return clean, corrupted, torch.arange(b) + answer_offset, torch.arange(b) + distractor_offset


def mean_logit_diff(a, d):
    "TransformerLens-style metric: the batch-mean logit difference at the last position (answer `a` vs distractor `d`)."
    return lambda logits: (logits[torch.arange(len(logits)), -1, a] - logits[torch.arange(len(logits)), -1, d]).mean()


@functools.lru_cache(maxsize=1)
def _builtin():
    from actlab.models import load_model
    return load_model('builtin', device='cpu')


def builtin_model():
    "The shipped built-in model (loaded once per test process); skips when this checkout does not ship it."
    from actlab.models import data_dir, DEFAULT_MODEL_DIR
    if not (data_dir() / DEFAULT_MODEL_DIR / 'config.json').exists():
        pytest.skip('the built-in model is not shipped in this checkout')
    return _builtin()


def builtin_pairs(model=None, n_per_cell: int = 8, **filters):
    "The default task's pairs for the built-in model (`TaskConfig(n_per_cell=...)`), optionally filtered (`PairSet.filter`)."
    from actlab.tasks import TaskConfig, make_pairs
    pairs = make_pairs(TaskConfig(n_per_cell=n_per_cell), (model or builtin_model()).tokenizer)
    return pairs.filter(**filters) if filters else pairs


def word_model(n_layers: int = 2, d_model: int = 32, n_heads: int = 4, seed: int = 0, **kw):
    "A random HookedTransformer on the task's word tokenizer, so it takes the task's pairs."
    from actlab.tasks import build_word_tokenizer
    from transformer_lens import HookedTransformer
    tok = build_word_tokenizer()
    m = tiny_model(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_vocab=len(tok), seed=seed, **kw)
    return HookedTransformer(m.cfg, tokenizer=tok).eval() if m.tokenizer is None else m


def tiny_store(path: str | Path, model, pairs, hooks=('blocks.0.hook_resid_post',), **cfg):
    "A small activation store of `pairs` at `hooks` (last position), written with `actlab.extract.extract`."
    from actlab.extract import ExtractConfig, extract
    return extract(model, pairs, path, ExtractConfig(hooks=tuple(hooks), progress=False, **cfg))
