"""Integration tests of the foundation: tasks, models, baseline, used as a user would import them."""
import json
import subprocess
import sys
import time

import pytest
import torch

from actlab.core import ConfigError, state_dict_hash
from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer, SCHEMA, TEMPLATES, all_problems
from actlab.models import (BuiltinModelConfig, ModelLoadError, load_model, save_model, load_saved_model, CorpusBuilder,
                           build_corpus, builtin_corpus, corpus_folder, heldout_ce, train_builtin_model, data_dir, DEFAULT_MODEL_DIR,
                           random_like)
from actlab.baseline import (evaluate_pairs, condition_table, phenomenon_claims, prompt_report, answer_attribution, answer_bias,
                             decodability_by_layer, decodability_table, decodable_upstream_claim)
from actlab.metrics import correct, margin
from helpers import builtin_model


@pytest.fixture(scope='module')
def model():
    return builtin_model()


@pytest.fixture(scope='module')
def pairs(model):
    return make_pairs(TaskConfig(n_per_cell=10), model.tokenizer)


def test_pairs_schema_and_lengths(pairs):
    assert list(pairs.df.columns) == SCHEMA
    for g in pairs.groups():
        assert g.tokens('clean').shape == g.tokens('corrupted').shape
    assert set(pairs.df.corruption_type) == set(TaskConfig().families)


def test_no_train_eval_overlap(model):
    "No statement in the training corpus uses its problem's held-out template, the one every evaluation prompt uses."
    tok = model.tokenizer
    builder = CorpusBuilder(BuiltinModelConfig(), tok, seed=0)
    enc = lambda s: tuple(tok(s, add_special_tokens=False)['input_ids'])
    train = {(pr_ids, cue) for pr, cue, _ in builder.statements for pr_ids in [tuple(pr)]}
    for p in all_problems(TaskConfig()):
        problem, cue = TEMPLATES[p.op][p.heldout_template()]
        assert (enc(problem.format(a=p.a, b=p.b)), enc(' ' + cue)[0]) not in train


def test_labels_agree_with_argmax_by_hand(model, pairs):
    "survives / correct / margin match a by-hand computation on the raw logits."
    scores = evaluate_pairs(model, pairs)
    for g in pairs.groups()[:3]:
        logits = model(g.tokens('corrupted'))[:, -1].detach()
        by_hand = (logits.argmax(-1) == g.answer_ids).numpy()
        row = scores.set_index('example_id').loc[g.df.example_id]
        assert (row.survives.to_numpy() == by_hand).all() and (row.correct_corrupted.to_numpy() == by_hand).all()
        ans = logits.gather(1, g.answer_ids[:, None])[:, 0]
        other = logits.clone(); other[torch.arange(len(other)), g.answer_ids] = -1e9
        torch.testing.assert_close(torch.tensor(row.margin_corrupted.to_numpy()), ans - other.max(-1).values, atol=1e-4, rtol=1e-4)


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match='choose from'):
        TaskConfig(operations=('mul',))


def test_builtin_model_is_cached_and_identified(model):
    meta = json.loads((data_dir() / DEFAULT_MODEL_DIR / 'config.json').read_text())
    assert meta['recipe'] == BuiltinModelConfig().to_dict(), 'the cached model was trained with another recipe: retrain it'
    assert model.actlab_identity['weights_hash'] == meta['weights_hash'] == state_dict_hash(model.state_dict())
    t0 = time.time(); load_model('builtin', device='cpu'); assert time.time() - t0 < 30


def test_phenomenon_claims_hold_on_the_shipped_model(model):
    table = condition_table(evaluate_pairs(model, make_pairs(TaskConfig(), model.tokenizer)), n_boot=500)
    claims = phenomenon_claims(table)
    assert all(c.holds for c in claims), [c for c in claims if not c.holds]
    half = (table.accuracy_hi - table.accuracy_lo) / 2
    assert half.max() <= 0.08


_random_model = random_like


def test_claims_fail_on_a_random_weight_model(model):
    "The checks can fail: the same claims on a random-weight model of the same shape do not hold."
    rnd = _random_model(model)
    pairs = make_pairs(TaskConfig(n_per_cell=40), rnd.tokenizer)
    scores = evaluate_pairs(rnd, pairs)
    claims = phenomenon_claims(condition_table(scores, n_boot=300))
    assert not any(c.holds for c in claims if c.name in ('clean_accuracy', 'id_control_accuracy', 'ood_drop_grows_with_length')), claims
    up = decodable_upstream_claim(decodability_table(decodability_by_layer(rnd, pairs.filter(suffix_length=[1, 2]), n_splits=3), n_boot=200),
                                  rnd.cfg.n_layers)
    assert not up.holds, up


def test_training_is_deterministic():
    cfg = BuiltinModelConfig(d_model=16, n_heads=2, d_mlp=32, n_layers=2, n_train_seqs=48, n_test_seqs=8, lr_phases=(1e-3, 5e-4),
                             epochs_per_phase=1, batch_size=16)
    tok = build_word_tokenizer(cfg.task_config())
    corpus = build_corpus(cfg, tok)
    a, ha = train_builtin_model(cfg, tok, corpus, progress=False, device='cpu')
    b, hb = train_builtin_model(cfg, tok, corpus, progress=False, device='cpu')
    assert state_dict_hash(a.state_dict()) == state_dict_hash(b.state_dict())
    assert [h['heldout_ce'] for h in ha] == [h['heldout_ce'] for h in hb]
    c, _ = train_builtin_model(cfg.replace(seed=1), tok, build_corpus(cfg.replace(seed=1), tok), progress=False, device='cpu')
    assert state_dict_hash(a.state_dict()) != state_dict_hash(c.state_dict())


def test_shipped_corpus_reads_by_path_and_gives_the_recorded_ce(model):
    import datasets
    folder = corpus_folder()
    dd = datasets.load_dataset(str(folder))  # the way SAELens's runners read a dataset path
    assert set(dd) == {'train', 'test'} and len(dd['train']) == BuiltinModelConfig().n_train_seqs
    meta = json.loads((data_dir() / DEFAULT_MODEL_DIR / 'config.json').read_text())
    assert abs(heldout_ce(model, dd['test']) - meta['heldout_ce']) < 1e-4
    assert builtin_corpus()['test']['tokens'][:3] == dd['test']['tokens'][:3]


def test_local_hf_checkpoint_roundtrip(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = build_word_tokenizer()
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, n_ctx=32, vocab_size=len(tok))).eval()
    hf.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    m = load_model(str(tmp_path), device='cpu', fold_ln=False, center_writing_weights=False, center_unembed=False)
    ids = torch.tensor([[2, 5, 6, 7]])
    torch.testing.assert_close(m(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
    # the study's task runs on it unchanged
    pairs = make_pairs(TaskConfig(n_per_cell=2, suffix_lengths=(1,)), m.tokenizer)
    assert len(evaluate_pairs(m, pairs)) == len(pairs)


def test_unknown_and_unreachable_models_fail_fast():
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="Use 'builtin'"):
        load_model('definitely-not-a-model')
    with pytest.raises(ModelLoadError):
        load_model('gpt2-small')  # no hub on test machines
    assert time.time() - t0 < 20


def test_prompt_report(model, pairs):
    ex = pairs.df.iloc[0]
    rep = prompt_report(model, ex.prompt_plain, ex.answer_token)
    assert rep.rank == 0 and 0 < rep.prob <= 1 and rep.top_k[0][0].strip() == ex.answer_token.strip()
    with pytest.raises(ValueError, match='single-token'):
        prompt_report(model, ex.prompt_plain, ' 12 13')


def test_attribution_sums_to_logit_diff(model, pairs):
    g = pairs.groups()[0]
    att = answer_attribution(model, g.tokens('clean'), g.answer_ids, g.distractor_ids)
    ld = (model(g.tokens('clean'))[:, -1].gather(1, g.answer_ids[:, None]) - model(g.tokens('clean'))[:, -1].gather(1, g.distractor_ids[:, None]))[:, 0]
    bias = answer_bias(model, g.answer_ids, g.distractor_ids)
    torch.testing.assert_close(torch.tensor(att['components'].sum(1).to_numpy()) + bias, ld.detach(), atol=1e-3, rtol=1e-3)


def test_default_config_file_is_the_default_study():
    from pathlib import Path
    from actlab.study import StudyConfig
    assert StudyConfig.from_yaml(Path(__file__).parent.parent / 'configs' / 'default.yaml') == StudyConfig()


def test_cli_bad_config_says_what_to_do(tmp_path):
    bad = tmp_path / 'bad.yaml'; bad.write_text('task:\n  n_per_cel: 3\n')
    r = subprocess.run([sys.executable, '-m', 'actlab.cli', 'run', str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and 'known keys' in r.stderr and 'Traceback' not in r.stderr


def test_task_runs_on_a_gpt2_style_bpe_tokenizer(tmp_path):
    """GPT-2's own files can't be downloaded here: train a byte-level BPE (GPT-2's algorithm and pre-tokenizer) and
    check the task makes length-matched pairs with single-token answers under it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast
    import random
    from actlab.tasks import SUFFIX_FAMILIES, TEMPLATES
    rng = random.Random(0)
    words = [w for pool in SUFFIX_FAMILIES.values() for w in pool] + [str(i) for i in range(41)]
    words += [w for ts in TEMPLATES.values() for p, c in ts for w in (p.replace('{a}', '').replace('{b}', '') + ' ' + c).split()]
    corpus = [' '.join(rng.choice(words) for _ in range(12)) for _ in range(3000)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=1200, min_frequency=1, special_tokens=['<|endoftext|>'])
    bpe.save_model(str(tmp_path))
    tok = GPT2TokenizerFast(vocab_file=str(tmp_path / 'vocab.json'), merges_file=str(tmp_path / 'merges.txt'))
    pairs = make_pairs(TaskConfig(n_per_cell=5), tok)
    for g in pairs.groups():
        assert g.tokens('clean').shape == g.tokens('corrupted').shape
    assert all(len(tok(t, add_special_tokens=False)['input_ids']) == 1 for t in pairs.df.answer_token)
