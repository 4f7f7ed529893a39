"Drop-in parity with every patching function of TransformerLens 2.18, on random models of many architectures, and its input conventions."
import inspect, itertools
from functools import partialmethod

import pytest
import torch
from tqdm.auto import tqdm

tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)

import transformer_lens.patching as TLP
import actlab.patching as P
from actlab.patching import tiny_model, memory_budget, per_example_patch
from helpers import token_pair

# every public function of transformer_lens.patching (read from the module, so a new one fails the name test below)
TL_FUNCS = sorted(n for n in dir(TLP) if n.startswith('get_act_patch_'))
SETTERS = sorted(n for n in dir(TLP) if n.endswith('_patch_setter'))
ARCHS = {
    'ln': dict(),
    'lnpre_rotary': dict(normalization_type='LNPre', positional_embedding_type='rotary', rotary_dim=4),
    'rms_shortformer': dict(normalization_type='RMS', positional_embedding_type='shortformer', n_heads=2),
    'ln_alibi': dict(positional_embedding_type='alibi'),
    'gqa_rotary': dict(n_heads=4, n_key_value_heads=2, positional_embedding_type='rotary', rotary_dim=4),
    'gqa_rms': dict(n_heads=4, n_key_value_heads=1, normalization_type='RMS'),
    'attn_only_3layer': dict(attn_only=True, n_layers=3, n_heads=2),
    'no_norm': dict(normalization_type=None),
}
MLP_ONLY = ('mlp', 'resid_mid', 'block_every')


def batch(model, b=3, seq=5, seed=1):
    return token_pair(model, b, seq, seed, span=(1, 4))


def metric(logits):
    return (logits[:, -1, 1] - logits[:, -1, 2]).mean() + 0.1 * logits[:, -2, 3].mean()


def test_every_transformer_lens_function_exists_with_its_signature():
    assert len(TL_FUNCS) == 18, TL_FUNCS  # TransformerLens 2.18 has 18 get_act_patch_* functions
    for name in TL_FUNCS + ['generic_activation_patch', 'make_df_from_ranges'] + SETTERS:
        assert hasattr(P, name), name
        ours, theirs = inspect.signature(getattr(P, name)), inspect.signature(getattr(TLP, name))
        assert [(p.name, p.kind) for p in ours.parameters.values()] == [(p.name, p.kind) for p in theirs.parameters.values()], name
        for p in theirs.parameters.values():
            if p.default is not inspect.Parameter.empty and not callable(p.default):
                assert ours.parameters[p.name].default == p.default, (name, p.name)


@pytest.mark.parametrize('arch', list(ARCHS))
def test_all_functions_match_transformer_lens(arch):
    model = tiny_model(**ARCHS[arch])
    clean, corrupted = batch(model)
    _, cache = model.run_with_cache(clean)
    for name in TL_FUNCS:
        if model.cfg.attn_only and any(s in name for s in MLP_ONLY):
            continue
        with memory_budget(0.02):  # several chunks per layer
            ours = getattr(P, name)(model, corrupted, cache, metric)
        theirs = getattr(TLP, name)(model, corrupted, cache, metric)
        assert ours.shape == theirs.shape, (arch, name)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f'{arch} {name}')


@pytest.mark.parametrize('arch', ['ln', 'lnpre_rotary', 'gqa_rotary', 'ln_alibi'])
def test_input_conventions_match_transformer_lens(arch):
    model = tiny_model(**ARCHS[arch])
    clean, corrupted = batch(model)
    names = ['get_act_patch_resid_pre', 'get_act_patch_attn_head_out_by_pos', 'get_act_patch_attn_head_k_by_pos',
             'get_act_patch_attn_head_pattern_dest_src_pos', 'get_act_patch_attn_head_q_all_pos', 'get_act_patch_attn_head_pattern_all_pos']
    # 1. one clean prompt, cached once, broadcast over a corrupted batch
    _, cache1 = model.run_with_cache(clean[:1])
    for name in names:
        torch.testing.assert_close(getattr(P, name)(model, corrupted, cache1, metric), getattr(TLP, name)(model, corrupted, cache1, metric),
                                   atol=1e-4, rtol=0, msg=f'broadcast {name}')
    # 2. 1-D token tensors
    _, cache_1d = model.run_with_cache(clean[1])
    for name in names:
        torch.testing.assert_close(getattr(P, name)(model, corrupted[1], cache_1d, metric), getattr(TLP, name)(model, corrupted[1], cache_1d, metric),
                                   atol=1e-4, rtol=0, msg=f'1-D {name}')
    # 3. the clean prompt one token longer (BOS on the clean side only): TL returns the corrupted length where its setter works
    bos = torch.zeros(len(clean), 1, dtype=torch.long)
    _, cache_bos = model.run_with_cache(torch.cat([bos, clean], 1))
    for name in names:
        try:
            theirs = getattr(TLP, name)(model, corrupted, cache_bos, metric)
        except RuntimeError:  # TransformerLens fails with a shape error: we refuse with a message naming the fix
            with pytest.raises(ValueError, match='lengths must match'):
                getattr(P, name)(model, corrupted, cache_bos, metric)
            continue
        ours = getattr(P, name)(model, corrupted, cache_bos, metric)
        assert ours.shape == theirs.shape and corrupted.shape[1] in ours.shape, name
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f'longer clean {name}')


def test_longer_clean_fails_in_transformer_lens_where_we_refuse():
    "The refusal above is not vacuous: TransformerLens really fails on all-position patches of a longer clean prompt."
    model = tiny_model()
    clean, corrupted = batch(model)
    _, cache_bos = model.run_with_cache(torch.cat([torch.zeros(3, 1, dtype=torch.long), clean], 1))
    with pytest.raises(RuntimeError):
        TLP.get_act_patch_attn_head_q_all_pos(model, corrupted, cache_bos, metric)


# per-example q/k/v/pattern patching, against a naive per-example TransformerLens hook loop
SITE_TL = {'q': 'get_act_patch_attn_head_q_all_pos', 'k': 'get_act_patch_attn_head_k_all_pos', 'v': 'get_act_patch_attn_head_v_all_pos',
           'pattern': 'get_act_patch_attn_head_pattern_all_pos', 'q_by_pos': 'get_act_patch_attn_head_q_by_pos',
           'k_by_pos': 'get_act_patch_attn_head_k_by_pos', 'v_by_pos': 'get_act_patch_attn_head_v_by_pos',
           'pattern_by_pos': 'get_act_patch_attn_head_pattern_by_pos'}


@pytest.mark.parametrize('arch', ['ln', 'lnpre_rotary', 'rms_shortformer', 'gqa_rotary', 'ln_alibi'])
@pytest.mark.parametrize('site', list(SITE_TL))
def test_per_example_qkv_pattern_match_a_naive_loop(arch, site):
    "Each (example, site) against its own TransformerLens forward with a plain hook copying the clean value in."
    model = tiny_model(**ARCHS[arch])
    clean, corrupted = batch(model, b=3)
    a, d = torch.tensor([3, 4, 5]), torch.tensor([7, 8, 9])
    ours = per_example_patch(model, clean, corrupted, a, d, site=site, memory_mb=0.01)
    act, axes = P.SITES[site]
    shape = P.site_shape(model, site, clean.shape[1])
    assert ours.shape == (3, *shape)
    caches = [model.run_with_cache(clean[i:i + 1])[1] for i in range(len(clean))]
    for idx in itertools.product(*[range(n) for n in shape]):
        ix = dict(zip(axes, idx))
        h, p = ix['head'], ix.get('pos', slice(None))
        sl = (slice(None), h, p) if act == 'pattern' else (slice(None), p, h)  # [head, dest] for patterns, [pos, head] otherwise
        name = f'blocks.{ix["layer"]}.attn.hook_{act}'
        for i in range(len(clean)):
            def hook(x, hook):
                x[sl] = caches[i][name][sl]
                return x
            logits = model.run_with_hooks(corrupted[i:i + 1], fwd_hooks=[(name, hook)])
            want = logits[0, -1, a[i]] - logits[0, -1, d[i]]
            torch.testing.assert_close(ours[(i, *idx)], want, atol=1e-4, rtol=0, msg=f'{arch} {site} {i} {idx}')


def test_per_example_where_and_budget():
    model = tiny_model(n_heads=4, n_key_value_heads=2)
    clean, corrupted = batch(model, b=5)
    a, d = torch.arange(5), torch.arange(5) + 5
    full = per_example_patch(model, clean, corrupted, a, d, site='k_by_pos', memory_mb=64)
    torch.testing.assert_close(per_example_patch(model, clean, corrupted, a, d, site='k_by_pos', memory_mb=0.002), full, atol=1e-5, rtol=0)
    where = torch.rand(full.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    part = per_example_patch(model, clean, corrupted, a, d, site='k_by_pos', where=where)
    torch.testing.assert_close(part[where], full[where], atol=1e-5, rtol=0)
    base = P.prompt_logit_diff(model, corrupted, a, d)
    torch.testing.assert_close(part[~where], base[:, None, None, None].expand_as(full)[~where], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='where must be a bool tensor of shape'):
        per_example_patch(model, clean, corrupted, a, d, site='k_by_pos', where=where[:, 0])
