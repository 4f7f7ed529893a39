"""The L1 logistic probe against scikit-learn on the same problem: same standardized data, same objective, same tolerance, converged.

Both solve  min_w,b  mean_i logloss(y_i, x_i.w + b) + alpha * |w|_1  on the same X (standardized once, beforehand):
- actlab: `L1LogisticProbe(alpha, solver='torch', standardize=False, tol=tol)` (FISTA)
- scikit-learn: `LogisticRegression(l1_ratio=1.0, solver='saga', C=1/(n*alpha), tol=tol, max_iter=...)`; and
  `solver='liblinear'` (the other L1 solver a researcher would pick; it penalizes the intercept too, reported as is)
Convergence warnings are not suppressed: they are recorded, and a fit that warns is reported as not converged. Each
side's solution is scored on the one objective above, so "faster" is never "stopped earlier at a worse objective".
One warm-up fit of each, then `--repeats` fits; medians. Prints a JSON line (RESULT ...).

Usage: .venv/bin/python bench/probes_fair_bench.py [--quick] [--n 50000] [--d 128]
"""
from __future__ import annotations
import argparse, json, os, platform, time, warnings

os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('MKL_NUM_THREADS', '1')
import numpy as np


def objective(X, y, w, b, alpha):
    z = X @ w + b
    return float(np.mean(np.logaddexp(0, z) - y * z) + alpha * np.abs(w).sum())


def fit(make, X, y):
    from sklearn.exceptions import ConvergenceWarning
    est = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ConvergenceWarning)
        t = time.perf_counter(); est.fit(X, y); dt = time.perf_counter() - t
    conv = not any(issubclass(c.category, ConvergenceWarning) for c in caught)
    return dt, est, conv


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='5k rows, 2 repeats')
    ap.add_argument('--n', type=int, default=50_000)
    ap.add_argument('--d', type=int, default=128)
    ap.add_argument('--alpha', type=float, default=0.003)
    ap.add_argument('--tol', type=float, default=1e-6)
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    if a.quick: a.n, a.repeats = 5_000, 2
    import torch
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    from sklearn.linear_model import LogisticRegression
    from actlab.probes import L1LogisticProbe, planted_activations
    D = planted_activations(n_prompts=a.n // 5, rows_per_prompt=5, d=a.d, k=8, task='binary', seed=0)
    X = (D.X - D.X.mean(0)) / D.X.std(0)
    y = np.asarray(D.y).astype(float)
    n = len(y)
    C = 1.0 / (n * a.alpha)
    sides = {
        'actlab L1LogisticProbe torch (FISTA)': lambda: L1LogisticProbe(alpha=a.alpha, solver='torch', standardize=False, tol=a.tol, max_iter=20000),
        'sklearn LogisticRegression saga': lambda: LogisticRegression(l1_ratio=1.0, solver='saga', C=C, tol=a.tol, max_iter=20000),
        'sklearn LogisticRegression liblinear': lambda: LogisticRegression(l1_ratio=1.0, solver='liblinear', C=C, tol=a.tol, max_iter=20000),
    }
    print(f'{n} x {a.d} standardized float64 rows, alpha={a.alpha}, tol={a.tol}, threads {torch.get_num_threads()}, '
          f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
    res = {}
    for name, make in sides.items():
        fit(make, X[:2000], y[:2000])  # warm-up
        ts, conv = [], True
        for _ in range(a.repeats):
            dt, est, c = fit(make, X, y); ts.append(dt); conv &= c
        w, b = np.ravel(est.coef_), float(np.ravel(est.intercept_)[0])
        res[name] = dict(seconds=float(np.median(ts)), runs=ts, converged=bool(conv), objective=objective(X, y, w, b, a.alpha),
                         nonzero=int((w != 0).sum()))
    best = min(v['objective'] for v in res.values())
    print(f"{'solver':40s} {'seconds':>8s} {'objective':>12s} {'gap':>9s} {'nonzero':>7s} converged")
    for k, v in res.items():
        v['objective_gap'] = v['objective'] - best
        print(f"{k:40s} {v['seconds']:8.3f} {v['objective']:12.8f} {v['objective_gap']:9.2e} {v['nonzero']:7d} {v['converged']}")
    ours = res['actlab L1LogisticProbe torch (FISTA)']
    ratios = {k: v['seconds'] / ours['seconds'] for k, v in res.items() if not k.startswith('actlab')}
    for k, r in ratios.items(): print(f'  speedup actlab vs {k}: {r:.2f}x (baseline time / ours, same objective and tolerance)')
    print('RESULT ' + json.dumps(dict(bench='probes_fair', n=n, d=a.d, alpha=a.alpha, tol=a.tol, repeats=a.repeats, sides=res,
                                      speedup=ratios)))


if __name__ == '__main__':
    main()
