"""The whole study at GPT-2 small's shape on CPU, offline (issue 18, deliverable 4).

  python scripts/gpt2_shape.py make --out results/gpt2-shape-model   # the random-weight checkpoint + BPE tokenizer (~500 MB)
  python scripts/gpt2_shape.py run [--model DIR] [--out results]      # `actlab run configs/gpt2-shape-cpu.yaml`, timed

`run` writes the checkpoint first if DIR lacks one, runs the CLI in a subprocess and samples its resident memory every
0.1 s; it prints one row per phase (seconds from the manifest, peak RSS from the sampler, and the manifest's own
`peak_rss_mb` where the study records one) and writes them to <out>/gpt2-shape-cpu/phase_resources.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / 'configs' / 'gpt2-shape-cpu.yaml'
SETUP = 'setup'  # before phase A: imports, loading the model, making the pairs


def _rss_mb(pid: int) -> float:
    "Resident memory of `pid` and its children (MiB), from /proc; 0 once it has exited."
    total = 0.0
    try:
        kids = Path(f'/proc/{pid}/task/{pid}/children').read_text().split()
    except OSError:
        kids = []
    for p in [pid, *map(int, kids)]:
        try:
            for line in Path(f'/proc/{p}/status').read_text().splitlines():
                if line.startswith('VmRSS:'):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _done_phases(manifest: Path, since: float) -> list[str]:
    "The phases `manifest` lists, if this run wrote it (modified after `since`; an older one is a previous run's)."
    try:
        if manifest.stat().st_mtime < since:
            return []
        return list(json.loads(manifest.read_text()).get('phases', []))
    except (OSError, ValueError):
        return []


def monitored_run(cmd: list[str],  # the command (e.g. `actlab run CONFIG --out OUT`)
                  folder: Path,  # the results folder the run writes (its manifest.json says which phases are done)
                  phases: list[str],  # the phases in the order they run
                  interval: float = 0.1,  # seconds between samples
                  env: dict | None = None,
                  ) -> dict:
    "Run `cmd`, sampling its RSS; the peak MiB per phase (the first phase not yet in the manifest, or 'setup' before phase A)."
    manifest = folder / 'manifest.json'
    peaks, t0 = {}, time.time()
    with tempfile.TemporaryFile('w+') as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        started = False
        while proc.poll() is None:
            done = _done_phases(manifest, t0)
            try:  # the run writes study.yaml once the model is loaded and the pairs made (a previous run's is older)
                started = started or (folder / 'study.yaml').stat().st_mtime >= t0
            except OSError:
                pass
            todo = [p for p in phases if p not in done]
            phase = (todo[0] if todo else 'end') if started else SETUP
            peaks[phase] = max(peaks.get(phase, 0.0), _rss_mb(proc.pid))
            time.sleep(interval)
        log.seek(0)
        out = log.read()
    return dict(returncode=proc.returncode, wall_s=round(time.time() - t0, 1), peak_rss_mb={k: round(v, 1) for k, v in peaks.items()},
                output=out)


def make(folder: str | Path, seed: int = 0, small: bool = False) -> Path:
    "The checkpoint in `folder` (GPT-2 small's shape, or 2 layers of width 64 with `small`)."
    from actlab.models import gpt2_shape_checkpoint
    kw = dict(n_layer=2, n_embd=64, n_head=4) if small else {}
    return gpt2_shape_checkpoint(folder, seed=seed, **kw)


def run(model: str | Path, out: str | Path, config: str | Path = PRESET, small: bool = False, threads: int | None = None) -> dict:
    "Write the checkpoint if `model` has none, run the preset on it through the CLI, and return seconds and peak RSS per phase."
    from actlab.study import StudyConfig
    model, out = Path(model), Path(out)
    if not (model / 'config.json').exists():
        make(model, small=small)
    cfg = StudyConfig.from_yaml(config)
    cfg = cfg.replace(model=cfg.model.replace(name=str(model.resolve())))
    if small:  # 2 layers: the preset's layer-8 and layer-11 sites do not exist; '' = the study's defaults (the last block's input)
        cfg = cfg.replace(probes=cfg.probes.replace(site=''), sae=cfg.sae.replace(site=''))
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / f'{cfg.name}.yaml'
    cfg.to_yaml(cfg_path)
    env = dict(os.environ, **({'OMP_NUM_THREADS': str(threads)} if threads else {}))
    cmd = [sys.executable, '-m', 'actlab.cli', 'run', str(cfg_path), '--out', str(out), '--no-progress', '--overwrite']
    res = monitored_run(cmd, out / cfg.name, list(cfg.phases), env=env)
    folder = out / cfg.name
    man = json.loads((folder / 'manifest.json').read_text()) if (folder / 'manifest.json').exists() else {}
    res.update(folder=str(folder), seconds=man.get('seconds', {}), manifest_peak_rss_mb=man.get('peak_rss_mb'),
               n_pairs=man.get('n_pairs'), load=os.getloadavg(), threads=threads or os.environ.get('OMP_NUM_THREADS'))
    if folder.exists():
        (folder / 'phase_resources.json').write_text(json.dumps({k: v for k, v in res.items() if k != 'output'}, indent=2))
    return res


def table(res: dict) -> str:
    "A Markdown table: phase, seconds, peak RSS (sampled, and the manifest's where it has one)."
    man = res.get('manifest_peak_rss_mb') or {}
    rows = ['| phase | seconds | peak RSS (MiB) |' + (' manifest peak_rss_mb |' if man else ''), '|---|---:|---:|' + ('---:|' if man else '')]
    for ph, mb in res['peak_rss_mb'].items():
        if ph == 'end':
            continue
        s = res['seconds'].get(ph, '')
        rows.append(f'| {ph} | {s} | {mb:.0f} |' + (f" {man.get(ph, '')} |" if man else ''))
    rows.append(f"| total (wall) | {res['wall_s']} | {max(res['peak_rss_mb'].values()):.0f} |" + (' |' if man else ''))
    return '\n'.join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('make', help='write the random-weight GPT-2-shaped checkpoint and its BPE tokenizer')
    m.add_argument('--out', required=True, help='the checkpoint folder')
    m.add_argument('--seed', type=int, default=0)
    m.add_argument('--small', action='store_true', help='2 layers, d_model 64 (a quick check of the path)')
    r = sub.add_parser('run', help='run the gpt2-shape-cpu preset on the checkpoint, timing each phase')
    r.add_argument('--model', default='results/gpt2-shape-model', help='the checkpoint folder (written first if missing)')
    r.add_argument('--out', default='results', help='results root')
    r.add_argument('--config', default=str(PRESET))
    r.add_argument('--small', action='store_true', help='a 2-layer checkpoint if one must be written')
    r.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS for the run')
    a = ap.parse_args(argv)
    if a.cmd == 'make':
        print(make(a.out, a.seed, a.small))
        return 0
    res = run(a.model, a.out, a.config, a.small, a.threads)
    if res['returncode'] != 0:
        print(res['output'][-4000:], file=sys.stderr)
        print(f"actlab run failed (exit {res['returncode']})", file=sys.stderr)
        return res['returncode']
    print(table(res))
    print(f"{res['n_pairs']} pairs; load average {res['load']}; OMP_NUM_THREADS={res['threads']}; {res['folder']}/phase_resources.json")
    return 0


if __name__ == '__main__':
    sys.exit(main())
