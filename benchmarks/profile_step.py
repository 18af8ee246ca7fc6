"""Where a training step's time goes: the default model through `GlowModel.fit`, a few steady steps traced with
`tf.profiler.experimental`, every TensorFlow op's time grouped by what it computes; and the coupling networks'
convolutions alone (compare.py's 'convs', the training floor), traced the same way.

  python benchmarks/profile_step.py [--rounds 2] [--steps 8] [--batch 32] [--profiled-steps 6]

Settings: 32x32x3, L=3, K=8, width 128, batch 32, affine coupling, LU 1x1 convolution, float32 (public_api.py's).
Each child runs in a fresh process ('step': the model; 'convs': the floor), alternating round by round; the
table is the median over rounds. Results: benchmarks/results/profile_step.json (its "metrics" and a section of
BENCHMARKS.md, see report.py), and the table in docs/design.md ("Where a training step's time goes").

How ops are grouped: by the op's type and the name scopes in its name (the layers open one each:
`StepStack.apply_step` the layer's class name, `Coupling.couple` 'transform', the priors theirs, the training
step 'guard' / 'optimizer' / 'metrics'; TensorFlow's gradients keep the forward op's scopes under
'gradient_tape/'). An op's time is its own (self) time on its thread: with two cores, two ops may run at once,
so the op times of a step can add up to more than its wall time. "No op running" is the part of the steps' wall
time in which no thread ran any op (the executor between ops, Keras' Python loop between steps).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
HERE = pathlib.Path(__file__).resolve().parent

# (key, label) in the table's order. The first matching rule of `classify` decides an op's group.
GROUPS = (
  ('coupling_convs', "coupling networks' convolutions (forward + gradients, with fused bias/ReLU)"),
  ('coupling_net_other', "coupling networks' bias/ReLU gradients and output scale exp(3 logs)"),
  ('coupling_tail', "coupling's elementwise tail (sigmoid scale, shift, log-det sums)"),
  ('actnorm', 'actnorm (forward + gradients)'),
  (
    'conv1x1',
    '1x1 convolutions and their log-dets (LU; forward + gradients; with actnorm once it is folded in)',
  ),
  ('priors', 'split priors and top prior (their ZeroConv2D included)'),
  ('loop', 'loop and TensorArray overhead (the StepStack loops)'),
  ('in_loop_other', 'other ops inside the level loops (split/concat, counters, log-det adds)'),
  ('optimizer', 'optimizer (Adamax, fused) and the masked apply; EMA (off by default)'),
  ('guard', 'guard: finiteness of images, loss and every gradient'),
  ('metrics', 'metrics (loss, bits/dim, skipped steps)'),
  ('input', 'input pipeline (the iterator)'),
  ('other', 'other (squeeze, base distribution, loss, reshapes, ...)'),
)
LOOP_TYPES = {
  'Enter',
  'Exit',
  'Merge',
  'Switch',
  'NextIteration',
  'LoopCond',
  'RefEnter',
  'RefExit',
  'RefMerge',
}
NET_OTHER_TYPES = {'BiasAdd', 'BiasAddGrad', 'Relu', 'ReluGrad'}


def classify(name: str, op_type: str) -> str:
  """The group of one op, from its full name (name scopes) and type."""
  low = name.lower()
  if 'iterator' in op_type.lower() or op_type in ('IteratorGetNext', 'OptionalGetValue'):
    return 'input'
  if op_type.startswith('ResourceApply') or low.startswith('optimizer/') or '/optimizer/' in low:
    return 'optimizer'
  if low.startswith('adamax/') or low.startswith('adam/'):
    return 'optimizer'
  if low.startswith('guard/') or '/guard/' in low:
    return 'guard'
  if low.startswith('metrics/') or '/metrics/' in low:
    return 'metrics'
  if 'split_prior' in low or 'top_prior' in low:
    return 'priors'
  if 'foldedhead' in low:  # actnorm folded into the 1x1 convolution (tfp_glow.flow.stack.FoldedHead)
    return 'conv1x1'
  if '/actnorm/' in low or low.startswith('actnorm/'):
    return 'actnorm'
  if 'invertible1x1conv' in low:
    return 'conv1x1'
  if 'conv2d' in op_type.lower() or op_type in (
    '_FusedConv2D',
    'Conv2DBackpropFilter',
    'Conv2DBackpropInput',
  ):
    return 'coupling_convs'
  if '/transform/' in low:
    return 'coupling_tail'
  in_loop = 'while' in low
  if op_type in LOOP_TYPES or op_type.startswith(('TensorArray', 'TensorList')):
    return 'loop'
  if op_type in NET_OTHER_TYPES:
    return 'coupling_net_other'
  if in_loop:
    if op_type in ('Exp', 'Mul') and ('exp' in low.rsplit('/', 1)[-1] or 'mul' in low.rsplit('/', 1)[-1]):
      # the network's output scale pre * exp(3 logs) and its gradient (nets.py / kernels.py, unscoped)
      return 'coupling_net_other'
    return 'in_loop_other'
  return 'other'


# ---- reading the trace ---------------------------------------------------------------------------------


def op_events(logdir: str):
  """[(thread line id, start ps, duration ps, op name, op type)] of every TensorFlow op the host traced."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415

  paths = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    raise RuntimeError(f'no .xplane.pb under {logdir}')
  space = xplane_pb2.XSpace()
  space.ParseFromString(pathlib.Path(paths[0]).read_bytes())
  events = []
  for plane in space.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    meta = plane.event_metadata
    for line in plane.lines:
      base = line.timestamp_ns * 1000
      for ev in line.events:
        name = meta[ev.metadata_id].name
        if ':' not in name or '::' in name or name.startswith('$') or ' ' in name.split(':')[-1]:
          continue
        op_name, _, op_type = name.rpartition(':')
        op_type = op_type.split('#')[0]
        if not op_type or not op_type.replace('_', '').isalnum() or not op_name:
          continue
        events.append((line.id, base + ev.offset_ps, ev.duration_ps, op_name, op_type))
  return events


def self_times(events):
  """Each event's duration less the events nested in it on the same thread: [(name, type, self ps)]."""
  by_line = collections.defaultdict(list)
  for line, start, dur, name, op_type in events:
    by_line[line].append((start, dur, name, op_type))
  out = []
  for evs in by_line.values():
    evs.sort(key=lambda e: (e[0], -e[1]))
    stack = []  # [start, end, name, type, children ps]
    for start, dur, name, op_type in evs:
      while stack and stack[-1][1] <= start:
        s = stack.pop()
        out.append((s[2], s[3], s[1] - s[0] - s[4]))
      if stack:
        stack[-1][4] += min(dur, stack[-1][1] - start)
      stack.append([start, start + dur, name, op_type, 0])
    out.extend((s[2], s[3], s[1] - s[0] - s[4]) for s in stack)
  return out


def busy_ps(events, begin_ps: int, end_ps: int) -> int:
  """Time in [begin, end) in which at least one op ran on some thread (the union of the op intervals)."""
  spans = sorted(
    (max(s, begin_ps), min(s + d, end_ps)) for _, s, d, _, _ in events if s < end_ps and s + d > begin_ps
  )
  total, cur_s, cur_e = 0, None, None
  for s, e in spans:
    if cur_e is None or s > cur_e:
      total += 0 if cur_e is None else cur_e - cur_s
      cur_s, cur_e = s, e
    else:
      cur_e = max(cur_e, e)
  return total + (0 if cur_e is None else cur_e - cur_s)


def summarize(events, steps: int, wall_s: float) -> dict:
  groups = collections.defaultdict(float)
  types = collections.defaultdict(float)
  names = collections.defaultdict(lambda: collections.defaultdict(float))
  for name, op_type, ps in self_times(events):
    group = classify(name, op_type)
    groups[group] += ps / 1e9 / steps  # ms per step
    types[op_type] += ps / 1e9 / steps
    names[group][f'{name}:{op_type}'] += ps / 1e9 / steps
  starts = [s for _, s, _, _, _ in events]
  ends = [s + d for _, s, d, _, _ in events]
  busy = busy_ps(events, min(starts), max(ends)) / 1e9 / steps if events else 0.0
  op_ms = sum(groups.values())
  return dict(
    wall_ms_per_step=1000 * wall_s / steps,
    op_ms_per_step=op_ms,
    busy_ms_per_step=busy,
    ops_per_step=len(events) / steps,
    groups_ms={k: groups.get(k, 0.0) for k, _ in GROUPS},
    top_types_ms=dict(sorted(types.items(), key=lambda kv: -kv[1])[:20]),
    top_ops_ms={g: dict(sorted(n.items(), key=lambda kv: -kv[1])[:8]) for g, n in names.items()},
  )


# ---- the two children ------------------------------------------------------------------------------------


def profiled(run, steps: int):
  """Runs `run()` (which runs `steps` steps) under the profiler: (summary, wall seconds)."""
  import tensorflow as tf  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as logdir:
    options = tf.profiler.experimental.ProfilerOptions(
      host_tracer_level=3, python_tracer_level=0, device_tracer_level=0
    )
    tf.profiler.experimental.start(logdir, options=options)
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    tf.profiler.experimental.stop()
    return summarize(op_events(logdir), steps, wall)


def child_step(args) -> dict:
  import keras  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415

  import tfp_glow  # noqa: PLC0415

  batch = args.batch
  model = tfp_glow.GlowModel((32, 32, 3), levels=3, steps=args.steps, width=128, seed=0)
  model.compile()  # the defaults: Adamax with warmup, no EMA
  n = 2 + args.timed_steps + args.profiled_steps
  x = tf.random.stateless_uniform([batch * n, 32, 32, 3], (0, 1)) - 0.5
  data = lambda a, b: tf.data.Dataset.from_tensor_slices(x[a * batch : b * batch]).batch(batch)  # noqa: E731
  t0 = time.perf_counter()
  model.fit(data(0, 2), epochs=1, verbose=0)  # actnorm init, tracing, the first steps
  first = time.perf_counter() - t0
  ends = []
  clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
  model.fit(data(2, 2 + args.timed_steps), epochs=1, verbose=0, callbacks=[clock])
  step_s = statistics.median(b - a for a, b in zip(ends, ends[1:]))
  tail = data(2 + args.timed_steps, n)
  summary = profiled(lambda: model.fit(tail, epochs=1, verbose=0), args.profiled_steps)
  return dict(first_two_steps_s=first, step_ms=1000 * step_s, train_images_per_s=batch / step_s, **summary)


def child_convs(args) -> dict:
  """compare.py's 'convs' (the floor's images/s), then the same graph traced."""
  import tensorflow as tf  # noqa: PLC0415

  sys.path.insert(0, str(HERE))
  from compare import bench_convs  # noqa: PLC0415

  from tfp_glow.bijectors.nets import coupling_network  # noqa: PLC0415

  floor = bench_convs(((32, 32, 3), 3, args.steps, 128, args.batch, 'affine'), args.timed_steps, 0)
  # The same construction as compare.bench_convs, for the trace.
  (h, w, c), stacks = (32, 32, 3), []
  for level in range(3):
    h, w, c = h // 2, w // 2, c * 4
    for _ in range(args.steps):
      stacks.append(
        (coupling_network(c // 2, 2 * (c - c // 2), 128), tf.random.normal([args.batch, h, w, c // 2]))
      )
    c = c // 2 if level < 2 else c
  weights = [v for net, _ in stacks for v in net.trainable_variables]

  @tf.function
  def convs_only():
    with tf.GradientTape() as tape:
      inputs = [z for _, z in stacks]
      tape.watch(inputs)
      loss = tf.add_n([tf.reduce_sum(net(z)) for net, z in stacks])
    return tape.gradient(loss, weights + inputs)

  for _ in range(2):
    convs_only()

  def run():
    for _ in range(args.profiled_steps):
      out = convs_only()
    out[0].numpy()

  summary = profiled(run, args.profiled_steps)
  return dict(
    step_ms=1000 * args.batch / floor['train_images_per_s'],
    train_images_per_s=floor['train_images_per_s'],
    **summary,
  )


# ---- the parent -------------------------------------------------------------------------------------------


def median_of(rows: list[dict]) -> dict:
  """The median of each number over rounds; nested dicts (groups, types) key by key."""
  out = {}
  for key, value in rows[0].items():
    if key == 'top_ops_ms':
      out[key] = value  # the first round's: which ops fill each group
    elif isinstance(value, dict):
      keys = {k for r in rows for k in r[key]}
      out[key] = {k: statistics.median(r[key].get(k, 0.0) for r in rows) for k in keys}
      if key == 'groups_ms':
        out[key] = {k: out[key][k] for k, _ in GROUPS}
      else:
        out[key] = dict(sorted(out[key].items(), key=lambda kv: -kv[1] if isinstance(kv[1], float) else 0))
    elif isinstance(value, (int, float)):
      out[key] = statistics.median(r[key] for r in rows)
  return out


def git_head() -> str:
  return subprocess.run(
    ['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True
  ).stdout.strip()


def table(result: dict) -> list[str]:
  """The markdown table of docs/design.md and BENCHMARKS.md."""
  step, convs = result['medians']['step'], result['medians']['convs']
  op_total = step['op_ms_per_step']
  lines = [
    '| where | ms per step | % of op time |',
    '|---|---|---|',
  ]
  for key, label in GROUPS:
    ms = step['groups_ms'][key]
    lines.append(f'| {label} | {ms:.1f} | {100 * ms / op_total:.1f} |')
  lines += [
    f'| **all ops** (self times, both threads) | **{op_total:.1f}** | 100 |',
    f'| no op running (executor between ops, Keras between steps) | {step["wall_ms_per_step"] - step["busy_ms_per_step"]:.1f} | - |',
    f'| wall time of a traced step (untraced: {step["step_ms"]:.1f}) | {step["wall_ms_per_step"]:.1f} | - |',
    f"| the convolutions alone (compare.py's 'convs'): op time / wall (untraced {convs['step_ms']:.1f}) "
    f'| {convs["op_ms_per_step"]:.1f} / {convs["wall_ms_per_step"]:.1f} | - |',
  ]
  return lines


def section(data: dict) -> str:
  """BENCHMARKS.md's section (benchmarks/report.py): the table with its command, commit, date and load."""
  load = ', '.join(f'{v:.2f}' for v in data['load_average_before'])
  ratios = '; '.join(f'{k}: {v:.2f}' for k, v in data['ratios'].items())
  return '\n'.join(
    [
      '',
      "## Where a training step's time goes",
      '',
      f'{data["settings"]}; medians of `{data["command"]}` at {data["commit"]}, {data["date"]} (load average '
      f'before: {load}). Op self times from a `tf.profiler` trace of steady steps, grouped by name scope and op '
      "type (see the script's docstring); docs/design.md reads it.",
      *(['', f'**Read with care**: {"; ".join(data["notes"])}.'] if data.get('notes') else []),
      '',
      *table(data),
      '',
      f'Ratios: {ratios}.',
      *(['', after_cuts(data['after_cuts'])] if data.get('after_cuts') else []),
      '',
    ]
  )


def after_cuts(after: dict) -> str:
  """One line: each group's share of op time in a later run (`after_cuts`, added by hand to the JSON)."""
  total = after['op_ms_per_step']
  shares = ', '.join(f'{k} {100 * v / total:.1f}%' for k, v in after['groups_ms'].items() if v > 0)
  return f'After the cuts ({after["tree"]}; `{after["command"]}`, {after["date"]}, load {after["load"]}): {shares}.'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--steps', type=int, default=8, help='K, steps per level')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--timed-steps', type=int, default=20)
  parser.add_argument('--profiled-steps', type=int, default=6)
  parser.add_argument('--child', choices=('step', 'convs'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    result = (child_step if args.child == 'step' else child_convs)(args)
    print('RESULT ' + json.dumps(result), flush=True)
    return
  load = os.getloadavg()
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  flags = [
    f'--{k.replace("_", "-")}={getattr(args, k)}' for k in ('steps', 'batch', 'timed_steps', 'profiled_steps')
  ]
  rows = {'step': [], 'convs': []}
  for r in range(args.rounds):
    for child in rows:
      out = subprocess.run(
        [sys.executable, __file__, '--child', child, *flags], capture_output=True, text=True, env=env
      )
      lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
      if not lines:
        raise SystemExit(f'{child} round {r} failed:\n{out.stderr[-3000:]}')
      rows[child].append(json.loads(lines[-1][len('RESULT ') :]))
      short = {k: round(v, 1) for k, v in rows[child][-1].items() if isinstance(v, float)}
      print(child, r, json.dumps(short), flush=True)
  medians = {child: median_of(rs) for child, rs in rows.items()}
  step, convs = medians['step'], medians['convs']
  command = 'python benchmarks/profile_step.py ' + ' '.join(sys.argv[1:])
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  commit = git_head()
  settings = (
    f'32x32x3, L=3, K={args.steps}, width 128, batch {args.batch}, affine, LU, float32, GlowModel.fit'
  )
  conv_share = step['groups_ms']['coupling_convs'] + step['groups_ms']['coupling_net_other']
  result = dict(
    command=command,
    date=date,
    commit=commit,
    settings=settings,
    load_average_before=list(load),
    load_average_after=list(os.getloadavg()),
    groups=dict(GROUPS),
    medians=medians,
    rows=rows,
    ratios={
      'training images/s / the convolutions alone': step['train_images_per_s'] / convs['train_images_per_s'],
      "coupling network ops in the step / the convolutions alone's ops (op time)": conv_share
      / convs['op_ms_per_step'],
    },
  )
  result['metrics'] = [
    dict(
      metric=f'training step, share of op time in the coupling networks ({settings})',
      value=f'{100 * conv_share / step["op_ms_per_step"]:.0f}% ({conv_share:.0f} of {step["op_ms_per_step"]:.0f} ms)',
      command=command,
      commit=commit,
      date=date,
    ),
    dict(
      metric=f'training speed / the convolutions alone, profile run ({settings})',
      value=f'{result["ratios"]["training images/s / the convolutions alone"]:.2f} ({step["train_images_per_s"]:.0f} '
      f'/ {convs["train_images_per_s"]:.0f} images/s)',
      command=command,
      commit=commit,
      date=date,
    ),
  ]
  path = ROOT / 'benchmarks' / 'results' / 'profile_step.json'
  path.write_text(json.dumps(result, indent=1) + '\n')
  print('\n'.join(table(result)))
  print(json.dumps(result['ratios'], indent=1))
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
