"""The defaults study's section of BENCHMARKS.md (benchmarks/defaults_study.py's results; report.py renders it).

A study's table (test bits/dim per setting and seed, the paired difference to 'defaults'), the headline
comparisons (the best setting through the Python API; `tfp-glow train` against it and against
rosinality/glow-pytorch), and, when the results keep one, the study of the defaults before these.
"""

from __future__ import annotations

import json
import statistics

NOT_API = ('cli', 'rosinality')  # neither is a setting of the Python API
TARGET = 0.05  # bits/dim: how close `tfp-glow train` must come to the best through the Python API


def paired(runs: list[dict], a: str, b: str) -> dict | None:
  """a - b on the seeds both ran: {'seeds', 'diffs', 'mean', 'sd'} (sd nan with one seed), or None."""
  by = {(r['setting'], r['seed']): r['test_bits_per_dim'] for r in runs}
  seeds = sorted(s for (n, s) in by if n == a and (b, s) in by)
  if not seeds:
    return None
  diffs = [by[a, s] - by[b, s] for s in seeds]
  sd = statistics.stdev(diffs) if len(diffs) >= 2 else float('nan')
  return dict(seeds=seeds, diffs=diffs, mean=statistics.fmean(diffs), sd=sd)


def unpaired(runs: list[dict], a: str, b: str) -> dict | None:
  """mean(a) - mean(b) for runs that share nothing but the seed number (rosinality: its own initialization and
  data order): {'mean', 'sd'} with sd = sqrt(sd_a^2 / n_a + sd_b^2 / n_b) (Welch's standard error), or None."""
  values = {n: [r['test_bits_per_dim'] for r in runs if r['setting'] == n] for n in (a, b)}
  if not all(values.values()):
    return None
  if min(len(v) for v in values.values()) < 2:
    return dict(mean=statistics.fmean(values[a]) - statistics.fmean(values[b]), sd=float('nan'), diffs=[0])
  se = sum(statistics.variance(v) / len(v) for v in values.values()) ** 0.5
  diffs = values[a] + values[b]  # only their count matters to _verdict
  return dict(mean=statistics.fmean(values[a]) - statistics.fmean(values[b]), sd=se, diffs=diffs)


def best_api(summary: dict) -> str | None:
  """The Python-API setting of lowest test bits/dim, by its paired difference to 'defaults' (0 for 'defaults'
  itself): means over different seeds are not comparable (a seed's data order and initial flow move every
  setting alike)."""
  api = {k: v.get('diff_mean', 0.0) for k, v in summary.items() if k not in NOT_API}
  return min(api, key=api.get) if api else None


def verdict(d: dict, lower: str = 'lower, shown', higher: str = 'higher, shown') -> str:
  """'not shown' when |mean| <= 2 sd, else `lower` / `higher` (a difference of paired() or unpaired())."""
  if len(d['diffs']) < 2:
    return 'one seed'
  return 'not shown' if abs(d['mean']) <= 2 * d['sd'] else (lower if d['mean'] < 0 else higher)


def headline(data: dict) -> list[tuple[str, str]]:
  """The comparisons the study exists for, (label, line) each (none where a setting did not run)."""
  runs, summary = data['runs'], data['summary']
  best = best_api(summary)
  lines = []
  if best is None:
    return lines
  gain = summary[best].get('diff_mean', 0.0)
  lines.append(
    (
      'best through the Python API',
      f'Best through the Python API: {best} ({summary[best]["mean"]:.3f} over {summary[best]["n"]} seeds; '
      f'{gain:+.3f} vs defaults, paired).',
    )
  )
  vs_best = paired(runs, 'cli', best)
  trained = {json.dumps(r['cli_defaults']) for r in runs if r['setting'] == 'cli' and 'cli_defaults' in r}
  if trained:
    lines.append(
      ('tfp-glow train trained with', f'`tfp-glow train` trained with: {"; ".join(sorted(trained))}.')
    )
  if vs_best:
    upper = vs_best['mean'] + 2 * vs_best['sd']
    lines.append(
      (
        'tfp-glow train vs the best through the Python API',
        f'`tfp-glow train` vs it: {vs_best["mean"]:+.3f} ± {vs_best["sd"]:.3f} bits/dim (paired over seeds '
        f'{", ".join(map(str, vs_best["seeds"]))}; target: within {TARGET}: '
        f'{"met" if vs_best["mean"] <= TARGET else "not met"} by the mean, mean + 2 sd = {upper:+.3f}).',
      )
    )
  vs_peer = unpaired(runs, 'cli', 'rosinality')
  if vs_peer:
    lines.append(
      (
        'tfp-glow train vs rosinality/glow-pytorch',
        f'`tfp-glow train` vs rosinality/glow-pytorch: {vs_peer["mean"]:+.3f} ± {vs_peer["sd"]:.3f} bits/dim '
        f'(difference of the means ± its standard error, unpaired: the peer shares only the seed number, not '
        f'the initial flow or the data order): {verdict(vs_peer)}.',
      )
    )
  vs_recipe = unpaired(runs, 'adam_1e-3_no_warmup', 'rosinality')
  if vs_recipe:
    lines.append(
      (
        "the peer's recipe through the Python API vs rosinality/glow-pytorch",
        f"The peer's recipe through the Python API (adam_1e-3_no_warmup) vs the peer: {vs_recipe['mean']:+.3f} "
        f'± {vs_recipe["sd"]:.3f} bits/dim ({verdict(vs_recipe)}): the engines at the same optimizer.',
      )
    )
  return lines


def _defaults_text(settings: dict) -> str:
  d = settings['defaults']
  return (
    f'{d["optimizer"].capitalize()}, lr {d["lr"]:.0e}'.replace('e-0', 'e-')
    + f', {d["warmup_epochs"]:g} epoch of warmup, '
    f'{"EMA" if d["ema"] else "no EMA"}, every training image'
  )


def table(data: dict) -> list[str]:
  summary = data['summary']
  seeds = sorted({r['seed'] for r in data['runs']})
  by = {(r['setting'], r['seed']): r for r in data['runs']}
  lines = [
    '| setting | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean | vs defaults (mean ± sd) | verdict |',
    '|---|' + '---|' * len(seeds) + '---|---|---|',
  ]
  for name, row in summary.items():
    cells = [f'{by[name, s]["test_bits_per_dim"]:.3f}' if (name, s) in by else '-' for s in seeds]
    diff = f'{row["diff_mean"]:+.3f} ± {row["diff_sd"]:.3f}' if 'diff_mean' in row else '-'
    lines.append(
      f'| {name} | ' + ' | '.join(cells) + f' | {row["mean"]:.3f} | {diff} | {row.get("verdict", "-")} |'
    )
  return lines


def _study(data: dict) -> list[str]:
  key = data['key']
  loads = [r['loadavg_before'] for r in data['runs']]
  ran = {r['setting'] for r in data['runs']}
  peer = (
    " (adam_1e-3_no_warmup and rosinality: the peer's recipe, Adam 1e-3 without warmup)"
    if ran & {'adam_1e-3_no_warmup', 'rosinality'}
    else ''
  )
  peer_seed = '; rosinality: the seed number only' if 'rosinality' in ran else ''
  lines = [
    f'benchmarks/natural_patches.py patches (32x32x3, 8 bits; every {key["train_every"]}th training patch, the '
    f'whole held-out test.npz), L={key["levels"]} K={key["steps"]} width {key["width"]}, batch {key["batch"]}, '
    f'{key["epochs"]} epochs, at {data["commit"]}, {data["date"]}; a shared machine (load average '
    f'{min(loads):.0f}-{max(loads):.0f}: times are not comparable, bits/dim are). Test bits/dim; each setting '
    f"differs from 'defaults' (the CLI's folder / npz defaults then: {_defaults_text(data['settings'])}) in one "
    f'factor{peer}; the difference is paired by seed (same initial flow, data order, noise{peer_seed}); "not '
    'shown" when |mean| <= 2 sd.',
    '',
    *table(data),
  ]
  extra = [line for _, line in headline(data)]
  if extra:
    lines += ['', *extra]
  if data.get('notes'):
    lines += ['', f'Notes: {data["notes"]}.']
  return lines


def section(data: dict) -> str:
  """The study's section for BENCHMARKS.md, the previous study's below it."""
  lines = ['', f'## Defaults on natural images (`{data["command"].strip()}`)', '', *_study(data)]
  previous = data.get('previous')
  if previous:
    lines += [
      '',
      f'### The study before, of the defaults then (`{previous["command"].strip()}`)',
      '',
      *_study(previous),
    ]
  return '\n'.join(lines) + '\n'
