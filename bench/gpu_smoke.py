"""The study and the engine on CUDA: every phase with device='cuda', one table of phase times. On a machine without a
visible CUDA device it says it skipped and exits 0.

    python bench/gpu_smoke.py            # a small default study on cuda:0, then a sharded patching sweep on it
    python bench/gpu_smoke.py --n-per-cell 50

Prints a RESULT JSON line (read by bench/run_all.py).
"""
from __future__ import annotations
import argparse, json, sys, tempfile, time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n-per-cell', type=int, default=20)
    ap.add_argument('--quick', action='store_true', help='(the same small run)')
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print('gpu_smoke: skipped (no CUDA device visible: torch.cuda.is_available() is False)')
        return 0
    from actlab.study import StudyConfig, run_study
    from actlab.tasks import TaskConfig
    from actlab.models import load_model
    from actlab.tasks import make_pairs
    from actlab.engine import EngineConfig, patch
    from actlab.patching import per_example_patch
    phases = {}
    cfg = StudyConfig(name='gpu', task=TaskConfig(n_per_cell=a.n_per_cell))
    cfg.model.device = 'cuda'; cfg.sae.device = 'cuda'
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        try:
            folder = run_study(cfg, td, progress=False)
            m = json.loads((Path(folder) / 'manifest.json').read_text())
            for ph, s in m['seconds'].items(): phases[f'study phase {ph}'] = dict(seconds=s, ok=True, note='model.device=cuda')
        except Exception as e:
            phases['study'] = dict(seconds=time.perf_counter() - t0, ok=False, note=f'{type(e).__name__}: {e}'[:200])
    model = load_model('builtin', device='cuda')
    g = make_pairs(TaskConfig(n_per_cell=a.n_per_cell), model.tokenizer).groups()[0]
    args = (g.tokens('clean'), g.tokens('corrupted'), torch.as_tensor(g.answer_ids), torch.as_tensor(g.distractor_ids))
    t0 = time.perf_counter()
    one = per_example_patch(model, *args, site='resid_pre'); torch.cuda.synchronize()
    phases['per_example_patch resid_pre'] = dict(seconds=time.perf_counter() - t0, ok=one.device.type == 'cuda', note=f'{len(g)} pairs')
    t0 = time.perf_counter()
    four = patch(per_example_patch, model, *args, engine=EngineConfig(num_shards=4), site='resid_pre'); torch.cuda.synchronize()
    phases['engine.patch, 4 local shards'] = dict(seconds=time.perf_counter() - t0, ok=bool(torch.allclose(one, four, atol=1e-4)),
                                                  note='equals the one-shard sweep')
    print(f"{'phase':40s} {'seconds':>8s}  ok   note")
    for k, v in phases.items(): print(f"{k:40s} {v['seconds']:8.2f}  {str(v['ok']):5s} {v['note']}")
    print(f'device: {torch.cuda.get_device_name(0)}')
    print('RESULT ' + json.dumps(dict(bench='gpu_smoke', device=torch.cuda.get_device_name(0), phases=phases)))
    return 0 if all(v['ok'] for v in phases.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
