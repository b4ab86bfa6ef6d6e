"""The accuracy study on Fashion-MNIST: `python -m ncfm_jax.study [--out=DIR] [...]`.

Pretrains one pool (`DIR/pool`, pretraining does not depend on the distillation
settings), then runs the CLI once per distinct distillation setting, each in its
own workdir `DIR/<cell>` holding a copy of the pool, `--parallel` at a time (on
one GPU several small runs share the device). The runs are a grid of
`ncfm_jax.grid`: after every finished cell it rewrites `DIR/results.json` and
the tables `DIR/<group>.md`, so an interrupted study keeps what it finished;
re-running resumes (finished cells are read back).

Groups (paper counterparts in brackets):
  methods   ipc x {random real, DM (mmd), NCFM without psi, NCFM with psi}  [Table 1]
  alpha     ipc 10, NCFM, alpha in {0.001, 0.1, 0.5, 0.9, 0.999}, beta = 1 - alpha [Fig. 5]
  freqs     ipc 10, NCFM, F in {16, 64, 256, 1024, 4096}                  [Fig. 6]
  crossarch ipc 10, NCFM, evaluated on ConvNet, AlexNet, VGG-11, ResNet-18 [Table 4]
  plateau   ipc 10, NCFM, what reduce-on-plateau watches: the match loss (which
            psi pushes up), a psi-free NCFD at fixed frequencies, nothing (fixed lr)
  release   ipc 10, NCFM against the release's behaviours one at a time: the same
            first real images every step, one frequency draw per class, psi off
  update    ipc 10, the release's per-class image update at its learning rate against
            the batched update at the same and at 10x the rate; random real and the
            initial set beside them
With `--seeds=0,1,2` every cell runs once per seed (the same seeds for every
setting: paired) and the tables give the mean +- std over seeds of each seed's
mean accuracy.
Cells that distil the same thing (alpha 0.5 and the config's F are the NCFM ipc 10
cell) run once. The budget is the config's (`--config`: a file, or the name of an
installed config such as `fashion_mnist.py:quick`). Arguments the study does not
know (e.g. `--config.data.data_dir=...`) are passed to every CLI run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys

import numpy as np

from ncfm_jax import config_lib
from ncfm_jax import grid
from ncfm_jax import workdir as wd
from ncfm_jax.errors import InputError

GROUPS = ("methods", "alpha", "freqs", "crossarch", "plateau", "release", "update")
PLATEAU = (  # (label, distill overrides)
    ("plateau on the match loss (default)", {}),
    ("plateau on the NCFD at fixed Gaussian frequencies", {"plateau_monitor": "fixed_ncfd"}),
    ("fixed learning rate", {"plateau_monitor": "none"}),
)
RELEASE = (  # (label, distill overrides)
    ("ours (defaults)", {}),
    ("the same first real images every step (release)", {"real_sampling": "first"}),
    ("one frequency draw per class (release)", {"frequency_draw": "per_class"}),
    ("psi off (release: sampling_net False)", {"sampler": "gaussian"}),
)
UPDATE = (  # (label, distill overrides): the image update and its learning rate
    ("per-class update (release), lr 1e-3", {"update_mode": "per_class", "lr": 1e-3,
                                             "calibration_mode": "separate"}),
    ("batched update, lr 1e-3", {"update_mode": "batched", "lr": 1e-3,
                                 "calibration_mode": "folded"}),
    ("batched update, lr 1e-2", {"update_mode": "batched", "lr": 1e-2,
                                 "calibration_mode": "folded"}),
)
ARCHS = ("convnet", "alexnet", "vgg11", "resnet18")
METHODS = (  # (label, short name, distill overrides)
    ("DM (mmd)", "dm", {"loss": "mmd"}),
    ("NCFM w/o psi", "ncfm_nopsi", {"sampler": "gaussian"}),
    ("NCFM", "ncfm", {}),
)
# Published Fashion-MNIST anchors of other methods (full budgets, GPU; docs/results.md
# names the sources).
PUBLISHED = {"random real": {1: 51.4, 10: 73.8, 50: 82.5},
             "DC": {1: 70.5, 10: 82.3, 50: 83.6},
             "DSA": {1: 70.6, 10: 84.6, 50: 88.7}}


@dataclasses.dataclass
class StudyCell:
  """One distillation setting: its workdir name, distill overrides and evaluated archs."""
  name: str
  distill: dict
  archs: tuple = ("convnet",)
  baselines: bool = False

  def flags(self) -> list[str]:
    out = [f"--config.distill.{k}={v}" for k, v in sorted(self.distill.items())]
    return out + [f"--config.eval.archs={arch}" for arch in self.archs] + [
        f"--config.eval.baselines={self.baselines}"]


def with_ipc(spec: str, ipc: int) -> str:
  """`path.py[:arg]` with `ipc=<ipc>` appended to its arg (epochs depend on ipc)."""
  path, _, arg = spec.partition(":")
  return f"{path}:{arg + ',' if arg else ''}ipc={ipc}"


def plan(groups, ipcs, defaults) -> tuple[list[StudyCell], dict]:
  """Distinct cells to run, and per group its rows `(label, cell name, source)`.

  `defaults` is the config's distill section; cells whose effective distill
  settings coincide are merged (the first name wins, archs are united).
  """
  cells: dict[str, StudyCell] = {}
  by_setting: dict[str, str] = {}
  rows: dict[str, list] = {g: [] for g in groups}

  def add(name, overrides, archs=("convnet",), baselines=False) -> str:
    setting = dict(defaults, **overrides)
    key = json.dumps(setting, sort_keys=True, default=str)
    if key in by_setting:
      cell = cells[by_setting[key]]
      cell.archs = tuple(a for a in ARCHS if a in set(cell.archs) | set(archs))
      cell.baselines = cell.baselines or baselines
      return cell.name
    cells[name] = StudyCell(name, {k: setting[k] for k in overrides}, tuple(archs), baselines)
    by_setting[key] = name
    return name

  if "methods" in groups:
    for ipc in ipcs:
      names = [add(f"ipc{ipc}_{short}", dict(overrides, ipc=ipc), baselines=short == "ncfm")
               for _, short, overrides in METHODS]
      rows["methods"].append((f"{ipc} | random real", names[-1], "baseline_random_real"))
      rows["methods"].extend((f"{ipc} | {label}", name, "eval")
                             for (label, _, _), name in zip(METHODS, names))
  if "crossarch" in groups:
    name = add("ipc10_ncfm", {"ipc": 10}, archs=ARCHS)
    rows["crossarch"].append(("NCFM, ConvNet-distilled", name, "eval"))
  if "alpha" in groups:
    for alpha in (0.001, 0.1, 0.5, 0.9, 0.999):
      name = add(f"ipc10_alpha{alpha}", {"ipc": 10, "alpha": alpha,
                                         "beta": round(1 - alpha, 6)})
      rows["alpha"].append((f"alpha {alpha}, beta {round(1 - alpha, 6)}", name, "eval"))
  for group, settings in (("plateau", PLATEAU), ("release", RELEASE)):
    if group in groups:
      for label, overrides in settings:
        suffix = "_".join(f"{k}{v}" for k, v in sorted(overrides.items())) or "ncfm"
        name = add(f"ipc10_{suffix}", dict(overrides, ipc=10))
        rows[group].append((label, name, "eval"))
  if "update" in groups:
    for i, (label, overrides) in enumerate(UPDATE):
      suffix = f"{overrides['update_mode']}_lr{overrides['lr']:g}"
      name = add(f"ipc10_{suffix}", dict(overrides, ipc=10), baselines=i == 0)
      rows["update"].append((label, name, "eval"))
      if i == 0:
        baselines = [("random real", name, "baseline_random_real"),
                     ("initial set", name, "baseline_init")]
    rows["update"].extend(baselines)
  if "freqs" in groups:
    for freqs in (16, 64, 256, 1024, 4096):
      name = add(f"ipc10_freqs{freqs}", {"ipc": 10, "num_freqs": freqs})
      rows["freqs"].append((f"F {freqs}", name, "eval"))
  # Longest first, so that parallel workers finish together.
  ordered = sorted(cells.values(), key=lambda c: (-len(c.archs), -c.distill["ipc"]))
  return ordered, rows


def _cell_text(result: dict | None) -> str:
  """``71.2 +- 0.3 (n=3; best 72.0 +- 0.2)``: the final accuracy and, when recorded,
  the best over each run's checkpoints."""
  if not result or not result.get("runs"):
    return "-"
  text = f"{result['mean']:.1f} +- {result['std']:.1f} (n={len(result['runs'])}"
  best = result.get("best")
  return text + (f"; best {best['mean']:.1f} +- {best['std']:.1f})" if best else ")")


def seeded_name(name: str, seed: int | None) -> str:
  return name if seed is None else f"{name}_seed{seed}"


def over_seeds(results: dict, seeds) -> dict:
  """`results` with each cell's seeds folded into one entry per cell name: per
  source and arch, `runs` = the seeds' mean accuracies (mean +- std over seeds)."""
  if seeds == [None]:
    return results
  folded: dict = {}
  for name in {key.rsplit("_seed", 1)[0] for key in results}:
    per_seed = [results[seeded_name(name, s)] for s in seeds if seeded_name(name, s) in results]
    cell: dict = {}
    for metrics in per_seed:
      for source, by_arch in metrics.items():
        if not isinstance(by_arch, dict):
          continue
        for arch, result in by_arch.items():
          if isinstance(result, dict) and result.get("runs"):
            best = (result.get("best") or {}).get("mean")
            cell.setdefault(source, {}).setdefault(arch, []).append((result["mean"], best))
    folded[name] = {source: {arch: _fold(pairs) for arch, pairs in by_arch.items()}
                    for source, by_arch in cell.items()}
  return folded


def _fold(pairs: list) -> dict:
  """Seeds' (final mean, best mean) -> mean +- std over seeds of each (best only
  when every seed recorded it)."""
  finals = [final for final, _ in pairs]
  bests = [best for _, best in pairs]
  out = {"mean": float(np.mean(finals)), "std": float(np.std(finals)), "runs": finals}
  if all(b is not None for b in bests):
    out["best"] = {"mean": float(np.mean(bests)), "std": float(np.std(bests)), "runs": bests}
  return out


def tables(rows: dict, results: dict, header: str) -> dict[str, str]:
  """Markdown per group from `results[cell] = metrics.json`."""
  out = {}
  for group, group_rows in rows.items():
    if group == "crossarch":
      lines = ["| setting | " + " | ".join(ARCHS) + " |", "| --- |" + " --- |" * len(ARCHS)]
      for label, name, source in group_rows:
        evals = results.get(name, {}).get(source, {})
        lines.append(f"| {label} | " + " | ".join(_cell_text(evals.get(a)) for a in ARCHS) + " |")
    else:
      first = "| ipc | method |" if group == "methods" else "| setting |"
      lines = [first + " ConvNet test accuracy (%) |",
               "| --- | --- | --- |" if group == "methods" else "| --- | --- |"]
      for label, name, source in group_rows:
        evals = results.get(name, {}).get(source, {})
        lines.append(f"| {label} | {_cell_text(evals.get('convnet'))} |")
      if group == "methods":
        ipcs = sorted({int(label.split()[0]) for label, _, _ in group_rows})
        for method, values in PUBLISHED.items():
          for ipc in ipcs:
            if ipc in values:
              lines.append(f"| {ipc} | published {method} (full budget) | {values[ipc]:.1f} |")
    out[group] = f"{header}\n\n" + "\n".join(lines) + "\n"
  return out


def _convnet_accuracy(metrics: dict) -> str:
  accuracy = metrics.get("eval", {}).get("convnet", {}).get("mean", float("nan"))
  return f"ConvNet {accuracy:.2f}%"


def _copy_pool(pool_dir: str, workdir: str) -> None:
  """Gives `workdir` the shared pool (the CLI then skips pretraining)."""
  if not os.path.exists(os.path.join(workdir, "pool")):
    os.makedirs(workdir, exist_ok=True)
    shutil.copytree(os.path.join(pool_dir, "pool"), os.path.join(workdir, "pool"))
    shutil.copy(os.path.join(pool_dir, "pool_accuracy.json"), workdir)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ncfm_jax.study", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=None,
                      help="study directory (resumable; default workdirs/study_<config>)")
  parser.add_argument("--config", default="configs/fashion_mnist.py:quick",
                      help="the CLI config that sets the budget")
  parser.add_argument("--group", default=",".join(GROUPS))
  parser.add_argument("--ipcs", default="1,10,50")
  parser.add_argument("--parallel", type=int, default=1, help="CLI runs at a time")
  parser.add_argument("--seeds", default="",
                      help="comma list: run every cell once per seed (paired)")
  args, passthrough = parser.parse_known_args(argv)
  if args.out is None:
    args.out = config_lib.default_workdir(args.config, prefix="study_")
    print(f"[study] --out={args.out} (the default for this config)", flush=True)
  groups = [g.strip() for g in args.group.split(",") if g.strip()]
  for group in groups:
    if group not in GROUPS:
      parser.error(f"unknown --group {group!r}; valid: {', '.join(GROUPS)}")
  try:
    ipcs = [int(i) for i in args.ipcs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or [None]
  except ValueError:
    parser.error(f"--ipcs and --seeds take comma lists of integers, got "
                 f"--ipcs={args.ipcs!r} --seeds={args.seeds!r}")
  if args.parallel < 1:
    parser.error("--parallel must be >= 1")
  try:
    grid.check_overrides(passthrough)
    wd.check_directory(args.out, "--out")
  except InputError as err:
    parser.error(str(err))
  try:
    config = config_lib.load_config(args.config)
  except FileNotFoundError as err:
    parser.error(str(err))
  cells, rows = plan(groups, ipcs, config.distill.to_dict())
  header = (f"config `{args.config}` {' '.join(passthrough)}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}, "
            f"{platform.node() or 'unknown host'}")

  pool = grid.Cell("pool", args.config, tuple(passthrough), mode="pretrain")
  pool_dir = os.path.join(args.out, pool.name)
  print(f"[study] {len(cells)} distillation settings x {len(seeds)} seed(s), "
        f"{args.parallel} at a time; "
        f"pretraining the shared pool in {pool_dir}", flush=True)
  grid.run_cell(pool, args.out, grid.child_env(args.parallel))
  grid_cells = [
      grid.Cell(seeded_name(c.name, seed), with_ipc(args.config, c.distill["ipc"]),
                tuple(c.flags() + ([] if seed is None else [f"--config.seed={seed}"])
                      + passthrough))
      for seed in seeds for c in cells]
  for cell in grid_cells:
    _copy_pool(pool_dir, os.path.join(args.out, cell.name))
  outcome = grid.run_grid(
      grid_cells, args.out, parallel=args.parallel, describe=_convnet_accuracy,
      prefix="[study]",
      tables=lambda results: {f"{group}.md": text for group, text in tables(
          rows, over_seeds(results, seeds), header).items()})
  for group, text in tables(rows, over_seeds(outcome.results, seeds), header).items():
    print(f"\n## {group}\n{text}", flush=True)
  if outcome.failures:
    print(f"error: {len(outcome.failures)} of {len(grid_cells)} runs failed",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
