"""Fit time of each actlab probe on 50k x d_model activations vs scikit-learn's L1 logistic regression (saga), same data, same run.

    .venv/bin/python bench/probes_bench.py [--quick] [--n 50000] [--d 128] [--device cpu|cuda] [--threads 1]

The baseline is `LogisticRegression(penalty='l1', solver='saga')` (written `l1_ratio=1.0`, its scikit-learn 1.9 spelling;
`penalty=` is deprecated there) at the same strength as our L1 logistic (`C = 1 / (n * alpha)`), on the raw activations
as a user would call it, default `tol` and `max_iter`. Every probe fits the same synthetic activations (a planted sparse
signal; binary target for classifiers, the latent for regressors, 3 classes for the multinomial/ternary probe) at one
fixed alpha. Printed: seconds per fit, ratio = probe time / baseline time (< 1: faster than the baseline), nonzero dims
or heads, train score.
"""
import argparse, os, time, warnings

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='5k rows, one repeat')
    ap.add_argument('--n', type=int, default=50_000)
    ap.add_argument('--d', type=int, default=128, help='d_model of the built-in model')
    ap.add_argument('--alpha', type=float, default=0.003)
    ap.add_argument('--device', default='cpu', help="device of the torch solver ('cuda' on a GPU machine)")
    ap.add_argument('--threads', type=int, default=1, help='torch / BLAS threads (same for every fit)')
    ap.add_argument('--repeats', type=int, default=1)
    a = ap.parse_args()
    if a.quick: a.n, a.repeats = 5_000, 1
    os.environ.setdefault('OMP_NUM_THREADS', str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from actlab.probes import (GroupLassoClassifier, GroupLassoRegressor, L1LogisticProbe, LassoProbe,
                               MultinomialL1Probe, planted_activations)
    warnings.simplefilter('ignore', ConvergenceWarning)
    rows_per = 5
    data = {t: planted_activations(n_prompts=a.n // rows_per, rows_per_prompt=rows_per, d=a.d, k=8, task=t, seed=0)
            for t in ('binary', 'regression', 'multiclass')}
    heads = planted_activations(n_prompts=a.n // rows_per, rows_per_prompt=rows_per, d=a.d, k=2, n_heads=8, task='binary', seed=0)
    heads_r = planted_activations(n_prompts=a.n // rows_per, rows_per_prompt=rows_per, d=a.d, k=2, n_heads=8, task='regression', seed=0)
    n = len(data['binary'].y)
    print(f"probe fit times on {n} x {a.d} float64 activations, alpha={a.alpha}, torch device={a.device}, threads={a.threads}")

    def timed(make, D):
        ts = []
        for _ in range(a.repeats):
            est = make(); t = time.perf_counter(); est.fit(D.X, D.y)
            if a.device.startswith('cuda'): torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        return min(ts), est

    base_t, base = timed(lambda: LogisticRegression(l1_ratio=1.0, solver='saga', C=1.0 / (n * a.alpha)), data['binary'])
    print(f"\nbaseline sklearn LogisticRegression(penalty='l1', solver='saga'), raw X: {base_t:.3f} s  "
          f"(n_iter {int(np.max(base.n_iter_))}, nonzero {(base.coef_ != 0).sum()}, acc {base.score(data['binary'].X, data['binary'].y):.3f})\n")
    dev = dict(device=a.device)
    cases = [
        ('L1LogisticProbe sklearn(saga)', lambda: L1LogisticProbe(alpha=a.alpha, tol=1e-4), data['binary']),
        ('L1LogisticProbe torch', lambda: L1LogisticProbe(alpha=a.alpha, solver='torch', **dev), data['binary']),
        ('LassoProbe sklearn(cd)', lambda: LassoProbe(alpha=a.alpha, tol=1e-4), data['regression']),
        ('LassoProbe torch', lambda: LassoProbe(alpha=a.alpha, solver='torch', **dev), data['regression']),
        ('MultinomialL1Probe sklearn(saga) 3 cls', lambda: MultinomialL1Probe(alpha=a.alpha, tol=1e-4), data['multiclass']),
        ('MultinomialL1Probe torch 3 cls', lambda: MultinomialL1Probe(alpha=a.alpha, solver='torch', **dev), data['multiclass']),
        ('GroupLassoClassifier torch 8 heads', lambda: GroupLassoClassifier(alpha=a.alpha, n_heads=8, **dev), heads),
        ('GroupLassoRegressor torch 8 heads', lambda: GroupLassoRegressor(alpha=a.alpha, n_heads=8, **dev), heads_r),
    ]
    print(f"{'probe':40s} {'seconds':>8s} {'ratio':>7s} {'nonzero':>8s} {'score':>6s}")
    for name, make, D in cases:
        t, est = timed(make, D)
        nz = f"{len(est.selected_heads_)}h" if hasattr(est, 'group_norms_') else str(len(est.support_))
        print(f"{name:40s} {t:8.3f} {t / base_t:7.3f} {nz:>8s} {est.score(D.X, D.y):6.3f}")
    print("\nratio = probe fit time / baseline fit time, same data, same run (< 1 is faster).")


if __name__ == '__main__':
    main()
