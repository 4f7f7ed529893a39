"""The study and the benchmarks on CUDA: every phase with device='cuda', float32 and bfloat16 stores, one table. On a machine
without a visible CUDA device it prints one line saying it skipped and exits 0.

    python bench/gpu_smoke.py                    # the default study on cuda (float32 and bfloat16 stores), then the benches
    python bench/gpu_smoke.py --quick            # a smaller study (n_per_cell 20) and the benches' --quick sizes
    python bench/gpu_smoke.py --dtype bfloat16   # the study with a bfloat16 store only
    python bench/gpu_smoke.py --device cpu --quick --n-per-cell 4   # the same script on the CPU (checks the script itself)

Rows: each study phase per store dtype (seconds, from the study manifest); bytes on disk of the store's activation columns,
bfloat16 against float32; extraction throughput with the model and the store in float32, and with both in bfloat16
(the bfloat16 store checked to be the float32 store rounded); SAE training from the bfloat16 store through the pinned,
non-blocking loader; exact patching and the 4-shard engine sweep; the attribution-patching and probe benches run with
--device. Prints a RESULT JSON line (read by bench/run_all.py; its `phases` hold seconds, ok and a note per row).
"""
from __future__ import annotations
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sync(device):
    import torch
    if str(device).startswith('cuda'): torch.cuda.synchronize()


def _act_bytes(store) -> int:
    "Bytes on disk of a store's activation columns."
    return sum(v for c, v in store.disk_bytes().items() if c in store.columns)


def _file_bytes(store) -> int:
    "Bytes on disk of a store's shard files (activations and labels)."
    return sum(f.stat().st_size for f in store.files)


def study_rows(rows: dict, device: str, n_per_cell: int, dtypes: list[str], out: Path):
    "The whole default study on `device`, once per store dtype; per-phase seconds, and the store bytes bfloat16 vs float32."
    from actlab.study import StudyConfig, run_study
    from actlab.store import ActivationStore
    from actlab.tasks import TaskConfig
    bytes_ = {}
    for dt in dtypes:
        cfg = StudyConfig(name=f'smoke-{dt}', task=TaskConfig(n_per_cell=n_per_cell))
        cfg.model.device = device; cfg.sae.device = device; cfg.extraction.dtype = dt
        t0 = time.perf_counter()
        try:
            folder = Path(run_study(cfg, out, progress=False))
            m = json.loads((folder / 'manifest.json').read_text())
            for ph, s in m['seconds'].items():
                rows[f'study [{dt} store] {ph}'] = dict(seconds=s, ok=True, note=f'model.device={device}, sae.device={device}')
            stores = [ActivationStore(folder / n) for n in ('store', 'sae_store') if (folder / n / 'manifest.json').exists()]
            assert all(s.dtype(c) == dt for s in stores for c in s.columns), 'a store of another dtype'
            bytes_[dt] = sum(_act_bytes(s) for s in stores)
        except Exception as e:
            rows[f'study [{dt} store]'] = dict(seconds=time.perf_counter() - t0, ok=False, note=f'{type(e).__name__}: {e}'[:200])
    if {'float32', 'bfloat16'} <= set(bytes_):
        r = bytes_['bfloat16'] / bytes_['float32']
        rows['study store bytes, bfloat16 / float32'] = dict(
            seconds=None, ok=r < 0.55, value=r,
            note=f"activation columns of store/ + sae_store/: {bytes_['bfloat16']:,} B vs {bytes_['float32']:,} B = {r:.3f}")


def extract_rows(rows: dict, device: str, n_per_cell: int, out: Path):
    "Extraction throughput (model and store float32, then both bfloat16); the bfloat16 store against the float32 one rounded."
    import torch
    from actlab.extract import ExtractConfig, extract, recipe_sites
    from actlab.models import load_model
    from actlab.tasks import TaskConfig, make_pairs
    model = load_model('builtin', device=device)
    pairs = make_pairs(TaskConfig(n_per_cell=n_per_cell), model.tokenizer)
    L = model.cfg.n_layers
    cfg = ExtractConfig(hooks=tuple(recipe_sites(model, 1, resid_mid_layers=[L - 1])), also_clean=True, progress=False)
    stores = {}
    m16 = load_model('builtin', device=device).to(torch.bfloat16)  # the forward passes in bfloat16
    for name, m, dt in (('float32 model and store', model, 'float32'), ('bfloat16 model and store', m16, 'bfloat16'),
                        ('float32 model, bfloat16 store', model, 'bfloat16')):
        extract(m, pairs.filter(suffix_length=pairs.df.suffix_length.min()), out / f'warm-{name}', cfg.replace(dtype=dt))  # warm-up
        _sync(device); t0 = time.perf_counter()
        stores[name] = st = extract(m, pairs, out / f'x-{name}', cfg.replace(dtype=dt))
        _sync(device); s = time.perf_counter() - t0
        rows[f'extract, {name}'] = dict(seconds=s, ok=all(st.dtype(c) == dt for c in st.columns), value=len(pairs) / s,
                                              note=f'{len(pairs) / s:,.0f} examples/s ({len(pairs)} pairs, {len(st.columns)} columns)')
    f32, b16 = stores['float32 model and store'], stores['float32 model, bfloat16 store']
    bad = sum(int((b16.tensor(c).view(torch.int16) != f32.tensor(c).to(torch.bfloat16).view(torch.int16)).sum()) for c in f32.columns)
    n = sum(f32.tensor(c).numel() for c in f32.columns)
    r = _act_bytes(b16) / _act_bytes(f32)
    rows['extract store bytes, bfloat16 / float32'] = dict(seconds=None, ok=r < 0.55, value=r,
                                                          note=f'activation columns {_act_bytes(b16):,} B vs {_act_bytes(f32):,} B = {r:.3f}; '
                                                               f'whole shards {_file_bytes(b16):,} B vs {_file_bytes(f32):,} B')
    rows['bfloat16 store = float32 store rounded'] = dict(seconds=None, ok=bad <= n * 1e-3, value=bad / n,
                                                          note=f'{bad} of {n:,} values differ in their bits (same model, same pairs)')
    return stores['bfloat16 model and store'], model


def sae_rows(rows: dict, device: str, store, steps: int):
    "SAE training from the bfloat16 store: batches pinned and copied non-blocking to the device, cast to float32 there."
    import torch
    from actlab.saes import SAETrainConfig, StoreProvider, train_sae
    col = [c for c in store.columns if not c.startswith('clean/')][0]
    bs = min(1024, len(store))
    p = StoreProvider(store, col, batch_size=bs, device=device)
    cfg = SAETrainConfig(architecture='topk', d_sae=8 * store.d_in(col), k=8, steps=steps, batch_size=bs, log_every=max(steps // 4, 1),
                         checkpoint_every=0, device=device)
    _sync(device); t0 = time.perf_counter()
    res = train_sae(cfg, p, progress=False)
    _sync(device); s = time.perf_counter() - t0
    ok = res.finished and bool(torch.isfinite(res.sae.W_dec).all()) and res.sae.W_dec.device.type == torch.device(device).type
    rows['SAE training from the bfloat16 store'] = dict(seconds=s, ok=ok, value=steps * bs / s,
                                                        note=f'{steps * bs / s:,.0f} samples/s, pin_memory={p.pin_memory}, {steps} steps of {bs}')


def patching_rows(rows: dict, device: str, model, n_per_cell: int):
    import torch
    from actlab.engine import EngineConfig, patch
    from actlab.patching import per_example_patch
    from actlab.tasks import TaskConfig, make_pairs
    g = make_pairs(TaskConfig(n_per_cell=n_per_cell), model.tokenizer).groups()[0]
    args = (g.tokens('clean'), g.tokens('corrupted'), torch.as_tensor(g.answer_ids), torch.as_tensor(g.distractor_ids))
    per_example_patch(model, *args, site='resid_pre'); _sync(device)  # warm-up
    t0 = time.perf_counter()
    one = per_example_patch(model, *args, site='resid_pre'); _sync(device)
    rows['per_example_patch resid_pre'] = dict(seconds=time.perf_counter() - t0, ok=one.device.type == torch.device(device).type,
                                               note=f'{len(g)} pairs')
    t0 = time.perf_counter()
    four = patch(per_example_patch, model, *args, engine=EngineConfig(num_shards=4), site='resid_pre'); _sync(device)
    rows['engine.patch, 4 local shards'] = dict(seconds=time.perf_counter() - t0, ok=bool(torch.allclose(one.cpu(), four.cpu(), atol=1e-4)),
                                                note='equals the one-shard sweep')


def bench_rows(rows: dict, device: str, quick: bool, timeout: int):
    "The benches that take --device, each in its own process."
    for script in ('atp_bench.py', 'probes_bench.py'):
        cmd = [sys.executable, str(HERE / script), '--device', device] + (['--quick'] if quick else [])
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            last = (r.stdout.strip().splitlines() or [r.stderr.strip()[-150:]])[-1]
            rows[f'{script} --device {device}'] = dict(seconds=time.perf_counter() - t0, ok=r.returncode == 0, note=last[:150])
        except subprocess.TimeoutExpired:
            rows[f'{script} --device {device}'] = dict(seconds=time.perf_counter() - t0, ok=False, note=f'timed out after {timeout} s')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda', help="where everything runs ('cuda', 'cuda:1'; 'cpu' only to check the script)")
    ap.add_argument('--n-per-cell', type=int, default=None, help='the study\'s pairs per cell (default: the study\'s 200; --quick 20)')
    ap.add_argument('--dtype', choices=('both', 'float32', 'bfloat16'), default='both', help='store dtype(s) of the study runs')
    ap.add_argument('--sae-steps', type=int, default=None, help='SAE training steps (default 500; --quick 50)')
    ap.add_argument('--skip', action='append', default=[], choices=('study', 'extract', 'sae', 'patching', 'benches'),
                    help='leave out a group of rows (repeatable)')
    ap.add_argument('--bench-timeout', type=int, default=600)
    ap.add_argument('--quick', action='store_true', help='small sizes')
    a = ap.parse_args(argv)
    import torch
    if a.device.startswith('cuda') and not torch.cuda.is_available():
        print('gpu_smoke: skipped (no CUDA device visible: torch.cuda.is_available() is False)')
        return 0
    n = a.n_per_cell or (20 if a.quick else 200)
    steps = a.sae_steps or (50 if a.quick else 500)
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        if 'study' not in a.skip:
            study_rows(rows, a.device, n, ['float32', 'bfloat16'] if a.dtype == 'both' else [a.dtype], td / 'study')
        store = model = None
        if not {'extract', 'sae', 'patching'} <= set(a.skip):
            try: store, model = extract_rows(rows, a.device, n, td / 'extract')
            except Exception as e: rows['extract'] = dict(seconds=None, ok=False, note=f'{type(e).__name__}: {e}'[:200])
        if 'sae' not in a.skip and store is not None:
            try: sae_rows(rows, a.device, store, steps)
            except Exception as e: rows['SAE training from the bfloat16 store'] = dict(seconds=None, ok=False, note=f'{type(e).__name__}: {e}'[:200])
        if 'patching' not in a.skip and model is not None:
            try: patching_rows(rows, a.device, model, min(n, 50))
            except Exception as e: rows['patching'] = dict(seconds=None, ok=False, note=f'{type(e).__name__}: {e}'[:200])
        if 'benches' not in a.skip: bench_rows(rows, a.device, a.quick, a.bench_timeout)
    dev_name = torch.cuda.get_device_name(torch.device(a.device)) if a.device.startswith('cuda') else f'cpu ({torch.get_num_threads()} threads)'
    print(f"{'row':48s} {'seconds':>8s}  ok    note")
    for k, v in rows.items():
        sec = f"{v['seconds']:8.2f}" if v.get('seconds') is not None else f"{'-':>8s}"
        print(f"{k:48s} {sec}  {str(v['ok']):5s} {v['note']}")
    print(f'device: {dev_name}; torch {torch.__version__}; total {time.perf_counter() - t_all:.0f} s; '
          f'command: python bench/gpu_smoke.py {" ".join(argv if argv is not None else sys.argv[1:])}')
    print('RESULT ' + json.dumps(dict(bench='gpu_smoke', device=dev_name, phases=rows)))
    return 0 if rows and all(v['ok'] for v in rows.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
