"""The tables of benchmarks/couplings.py: per-variant summaries, paired differences, the metric rows that
benchmarks/report.py lists and the BENCHMARKS.md section, from the study's JSON state (results/couplings.json).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics

PAIRS = [
  ('spline+conv', 'affine+conv', 'params'),
  ('spline+transformer', 'affine+transformer', 'params'),
  ('spline+conv', 'tfb.Glow+spline', 'params'),
  ('affine+transformer', 'affine+conv', 'time'),
  ('spline+transformer', 'spline+conv', 'time'),
]


def mean_sd(values: list[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float('nan'))


def summarize(state: dict) -> dict:
  """Per variant: bits/dim (mean, sd), speed, memory; per pair: the paired differences."""
  timing, runs = state['timing'], state['runs']
  t = {n: statistics.median(r['s_per_step']) for n, r in timing['per_round'].items()}
  variants = {}
  for name in timing['parameters']:  # the study's variants, in its order
    mine = [r for r in runs if r['variant'] == name]
    if not mine:
      continue
    variants[name] = dict(
      parameters=timing['parameters'][name],
      seeds=len(mine),
      bpd_params=mean_sd([r['bpd_params'] for r in mine]),
      bpd_time=mean_sd([r['bpd_time'] for r in mine]),
      steps_time=mine[0]['n_time'],
      train_images_per_s=timing['batch'] / t[name],
      sample_images_per_s=statistics.median(timing['per_round'][name]['sample_images_per_s']),
      peak_rss_gb=statistics.median(r['peak_rss_gb'] for r in mine),
      run_images_per_s=statistics.median(
        timing['batch'] / r['median_step_s'] for r in mine if 'median_step_s' in r
      )
      if any('median_step_s' in r for r in mine)
      else float('nan'),
    )
  pairs = []
  for a, b, condition in PAIRS:
    key = 'bpd_params' if condition == 'params' else 'bpd_time'
    by_seed = {(r['variant'], r['seed']): r[key] for r in runs}
    diffs = [by_seed[a, s] - by_seed[b, s] for s in state['seeds'] if (a, s) in by_seed and (b, s) in by_seed]
    if not diffs:
      continue
    mean, sd = mean_sd(diffs)
    shown = len(diffs) > 1 and abs(mean) > 2 * sd
    pairs.append(dict(pair=f'{a} - {b}', condition=condition, seeds=len(diffs), diffs=diffs, mean=mean, sd=sd,
                      verdict=('shown' if shown else 'not shown')))  # fmt: skip
  ratios = {}
  for spline, affine in [('spline+conv', 'affine+conv'), ('spline+conv@64', 'affine+conv@64')]:
    per = zip(timing['per_round'][spline]['s_per_step'], timing['per_round'][affine]['s_per_step'])
    ratios[f'{spline} / {affine}'] = statistics.median(s / a for s, a in per)
  return dict(variants=variants, pairs=pairs, step_ratios=ratios)


def metrics(state: dict, summary: dict) -> list[dict]:
  """Rows for benchmarks/report.py's table."""
  common = dict(command=state['command'], commit=state['commit'], date=state['date'])
  where = f'natural 32x32x3 patches, L=3 K=4, batch {state["batch"]}, {state["steps"]} steps'
  rows = []
  for name, v in summary['variants'].items():
    value = (
      f'equal params: {v["bpd_params"][0]:.4f} ± {v["bpd_params"][1]:.4f}; equal time ({v["steps_time"]} steps): '
      f'{v["bpd_time"][0]:.4f} ± {v["bpd_time"][1]:.4f} ({v["seeds"]} seeds); {v["parameters"]:,} parameters; '
      f'{v["train_images_per_s"]:.0f} training, {v["sample_images_per_s"]:.0f} sampling images/s; '
      f'peak RSS {v["peak_rss_gb"]:.2f} GB'
    )
    rows.append(dict(metric=f'couplings: test bits/dim, {name} ({where})', value=value, **common))
  for p in summary['pairs']:
    cond = 'equal params' if p['condition'] == 'params' else 'equal training time'
    value = f'{p["mean"]:+.4f} ± {p["sd"]:.4f} (paired, {p["seeds"]} seeds): {p["verdict"]}'
    rows.append(
      dict(metric=f'couplings: {p["pair"]}, test bits/dim at {cond} ({where})', value=value, **common)
    )
  ratios = '; '.join(f'{k} {v:.2f}x' for k, v in summary['step_ratios'].items())
  rows.append(dict(metric='couplings: spline / affine training step time (median of alternating rounds, '
                   'batch ' + str(state['batch']) + ')', value=ratios, **common))  # fmt: skip
  return rows


def section(data: dict) -> str:
  """The BENCHMARKS.md section (benchmarks/report.py): one row per variant, one per paired difference."""
  summary, timing = data['summary'], data['timing']
  load = ', '.join(f'{r["loadavg"][0]:.1f}' for r in data['runs'])
  lines = [
    f'\n## Couplings on natural images (`{data["command"]}`)\n',
    f"Natural 32x32x3 patches of scikit-image's photographs (`benchmarks/natural_patches.py`: 12,764 training, "
    f'836 held-out test patches), 8-bit, L=3, K=4, batch {data["batch"]}, Adamax 1e-3 with {data["warmup"]} warmup '
    f'steps; commit {data["commit"]}, {data["date"]}; {data["machine"]}. Seeds finished: '
    f'{min(v["seeds"] for v in summary["variants"].values())} of {len(data["seeds"])} (paired: same data order, '
    f'dequantization noise and initialization seed for every variant). Equal parameters: {data["steps"]} steps '
    f'each. Equal time: the budget {data["steps"]} x the fastest step time, each variant scored after the steps that '
    f'fit it. Speeds from the timing phase ({timing.get("note", "alternating rounds in one process")}); load '
    f'average during the runs: {load}.\n',
    '| variant | parameters | test bits/dim, equal params | steps at equal time | test bits/dim, equal time '
    '| training images/s (timing phase / own run) | sampling images/s | peak RSS GB |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for name, v in summary['variants'].items():
    (pm, ps), (tm, ts) = v['bpd_params'], v['bpd_time']
    lines.append(
      f'| {name} | {v["parameters"]:,} | {pm:.4f} ± {ps:.4f} | {v["steps_time"]} | {tm:.4f} ± {ts:.4f} '
      f'| {v["train_images_per_s"]:.0f} / {v["run_images_per_s"]:.0f} | {v["sample_images_per_s"]:.0f} | {v["peak_rss_gb"]:.2f} |'
    )
  lines += [
    '',
    '| paired difference (bits/dim) | at equal | per seed | mean ± sd | |',
    '|---|---|---|---|---|',
  ]
  for p in summary['pairs']:
    per_seed = ', '.join(f'{d:+.4f}' for d in p['diffs'])
    lines.append(
      f'| {p["pair"]} | {"parameters" if p["condition"] == "params" else "training time"} | {per_seed} '
      f'| {p["mean"]:+.4f} ± {p["sd"]:.4f} | {p["verdict"]} |'
    )
  ratios = '; '.join(f'{k} {v:.2f}x' for k, v in summary['step_ratios'].items())
  lines += ['', f"Training step time, spline / affine (median of the alternating rounds' ratios): {ratios}."]
  lines += [f'\n{note}' for note in data.get('notes', [])]
  return '\n'.join(lines) + '\n'


def save(state: dict, path: pathlib.Path) -> None:
  if state.get('runs'):
    summary = summarize(state)
    state = dict(state, summary=summary, metrics=metrics(state, summary))
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(state, indent=1))
  os.replace(tmp, path)
