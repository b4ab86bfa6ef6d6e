"""The paper's cells and what it reports for them: the datasets (their ipcs, class
counts and training-set sizes), NCFM's published accuracies (Tables 1, 2, 4, 5),
and `tables`, which sets a reproduction's results beside them (``table.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ncfm_jax.progress import format_seconds

CROSS_ARCHS = ("convnet", "alexnet", "vgg11", "resnet18")
ARCH_NAMES = {"convnet": "ConvNet", "alexnet": "AlexNet", "vgg11": "VGG-11",
              "resnet18": "ResNet-18"}


class Reported(NamedTuple):
  """A published accuracy, mean +- std (%)."""
  mean: float
  std: float | None = None

  def __str__(self) -> str:
    return f"{self.mean:.1f}" + (f" +- {self.std:.1f}" if self.std is not None else "")


class DatasetInfo(NamedTuple):
  """What a cell's dataset is: its paper ipcs and table, and sizes for the estimate."""
  ipcs: tuple[int, ...]
  num_classes: int
  train_images: int  # of the full training split (ImageNet subsets: about)
  table: str | None  # the paper's table holding its ConvNet values


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo((1, 10, 50), 10, 50_000, "Table 1"),
    "cifar100": DatasetInfo((1, 10, 50), 100, 50_000, "Table 1"),
    "tinyimagenet": DatasetInfo((1, 10, 50), 200, 100_000, "Table 1"),
    "imagenette": DatasetInfo((1, 10), 10, 9_469, "Table 2"),
    "imagewoof": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imagefruit": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imagemeow": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imagesquawk": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imageyellow": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "fashion_mnist": DatasetInfo((1, 10, 50), 10, 60_000, None),
}
CHANNELS = {"fashion_mnist": 1}
"""Image channels where not 3."""

# NCFM with a ConvNet, the paper's Table 1 (CIFAR-10/100, Tiny ImageNet at 64 px)
# and Table 2 (ImageNet subsets at 128 px): test accuracy (%), mean +- std.
PAPER: dict[str, dict[int, Reported]] = {
    "cifar10": {1: Reported(49.5, 0.3), 10: Reported(71.8, 0.3), 50: Reported(77.4, 0.3)},
    "cifar100": {1: Reported(34.4, 0.5), 10: Reported(48.7, 0.3), 50: Reported(54.7, 0.2)},
    "tinyimagenet": {1: Reported(18.2, 0.5), 10: Reported(26.8, 0.6),
                     50: Reported(29.6, 0.5)},
    "imagenette": {1: Reported(53.4, 1.6), 10: Reported(77.6, 1.0)},
    "imagewoof": {1: Reported(27.2, 1.1), 10: Reported(48.4, 1.3)},
    "imagefruit": {1: Reported(29.2, 0.7), 10: Reported(44.8, 1.5)},
    "imagemeow": {1: Reported(34.6, 0.7), 10: Reported(58.2, 1.2)},
    "imagesquawk": {1: Reported(41.6, 1.2), 10: Reported(72.8, 0.9)},
    "imageyellow": {1: Reported(46.6, 1.5), 10: Reported(74.2, 1.4)},
}
# The paper's Table 5 (NCFM with psi, "without additional data curation steps
# (such as fine-tuning or soft label integration)"): the cells it lists.
PAPER_NO_CURATION: dict[str, dict[int, Reported]] = {
    "cifar10": {10: Reported(68.9), 50: Reported(77.4)},
    "cifar100": {10: Reported(48.7), 50: Reported(54.4)},
    "tinyimagenet": {1: Reported(12.0), 10: Reported(24.3), 50: Reported(26.5)},
    "imagefruit": {10: Reported(41.4)},
    "imagemeow": {10: Reported(54.4)},
    "imagesquawk": {10: Reported(70.8)},
    "imageyellow": {10: Reported(69.2)},
}
# The paper's Table 4: CIFAR-10 distilled with ConvNet-3, networks of each
# architecture trained on it.
PAPER_CROSS_ARCH: dict[str, dict[int, dict[str, Reported]]] = {
    "cifar10": {
        10: {"convnet": Reported(71.8, 0.3), "alexnet": Reported(67.9, 0.5),
             "vgg11": Reported(68.0, 0.3), "resnet18": Reported(67.7, 0.5)},
        50: {"convnet": Reported(77.4, 0.3), "alexnet": Reported(75.5, 0.3),
             "vgg11": Reported(75.5, 0.3), "resnet18": Reported(73.8, 0.2)},
    },
}


def num_classes(config, dataset: str) -> int:
  """Classes of the cell's run: ``data.classes`` when set, else the dataset's."""
  classes = config.data.classes
  return len(classes) if classes else DATASETS[dataset].num_classes


def train_images(config, dataset: str) -> int:
  """The training images of the run, from the dataset's size (about, for ImageNet
  subsets) and ``data.classes`` / ``data.max_train_per_class``."""
  info = DATASETS[dataset]
  per_class = info.train_images // info.num_classes
  if config.data.max_train_per_class:
    per_class = min(per_class, int(config.data.max_train_per_class))
  return per_class * num_classes(config, dataset)


def budget_text(b: Mapping[str, Any], distilled_steps: int | None = None) -> str:
  """``distill 200/20000 steps; pool 20 x 1/60 epochs; eval 10/1000 epochs (40 steps);
  fraction 0.01`` (`distilled_steps`: the steps the run recorded, if known)."""
  steps, full = b["distill_steps"]
  if distilled_steps is not None:
    steps = distilled_steps
  pool_models, pool_used, pool_full, pool_unit = b["pool"]
  eval_used, eval_full, eval_unit, eval_steps = b["eval"]
  return (f"distill {steps}/{full} steps; pool {pool_models} x {pool_used}/{pool_full} "
          f"{pool_unit}; eval {eval_used}/{eval_full} {eval_unit} ({eval_steps} steps); "
          f"fraction {b['fraction']:g}")


def _ours(metrics: Mapping[str, Any], arch: str, statistic: str = "final") -> str:
  """``71.2 +- 0.3 (n=10)``: the final accuracy, or with ``statistic="best"`` the
  best over each run's checkpoints (what the release reports)."""
  result = metrics.get("eval", {}).get(arch)
  if result and statistic == "best":
    result = result.get("best")
  if not result or not result.get("runs"):
    return "-"
  return f"{result['mean']:.1f} +- {result['std']:.1f} (n={len(result['runs'])})"


def tables(results: Mapping[str, dict], sidecars: Mapping[str, dict], header: str) -> str:
  """``table.md``: a ConvNet row per cell, and a cross-architecture table for cells
  evaluated on more than ConvNet.

  Args:
    results: cell name -> its metrics.json (``results.json``).
    sidecars: cell name -> its ``reproduce.json`` (dataset, ipc, budget, device,
      wall and estimated seconds); cells without one are not listed.
    header: the first lines (command, date).
  """
  def order(name):
    s = sidecars[name]
    return (list(DATASETS).index(s["dataset"]), s["ipc"], name)
  names = sorted((n for n in sidecars if "dataset" in sidecars[n]), key=order)
  lines = [header, "",
           "ConvNet test accuracy (%): the paper's (Table 1: CIFAR-10/100, Tiny ImageNet; "
           "Table 2: ImageNet subsets; Table 5: without data curation such as soft labels) "
           "and ours, mean +- std over n networks trained from scratch on the distilled set "
           "(hard labels): 'ours, final' is each network's accuracy after its last step; "
           "'ours, as the release reports' is each network's best accuracy over its "
           "checkpoints (every epoch_eval_interval epochs), selected on the test set, "
           "which is the statistic the paper's cells are. Budget: what ran against the "
           "release's.", "",
           "| cell | paper | paper, Table 5 | ours, final | ours, as the release reports | "
           "budget | device | wall time |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  cross = []
  for name in names:
    s, metrics = sidecars[name], results.get(name, {})
    dataset, ipc = s["dataset"], s["ipc"]
    paper = PAPER.get(dataset, {}).get(ipc)
    no_curation = PAPER_NO_CURATION.get(dataset, {}).get(ipc)
    wall = format_seconds(s["wall_seconds"]) if s.get("wall_seconds") else "-"
    if s.get("estimate_seconds"):
      wall += f" (estimate {format_seconds(s['estimate_seconds'])})"
    distilled = metrics.get("distill", {}).get("steps")
    lines.append(f"| {name} | {paper or '-'} | {no_curation or '-'} | "
                 f"{_ours(metrics, 'convnet')} | {_ours(metrics, 'convnet', 'best')} | "
                 f"{budget_text(s['budget'], distilled)} | {s.get('device', '-')} | {wall} |")
    if set(metrics.get("eval", {})) - {"convnet"}:
      cross.append(name)
  if cross:
    lines += ["", "Cross-architecture (paper Table 4: CIFAR-10, ConvNet-distilled): ours "
              "(paper), networks of each architecture trained on the ConvNet-distilled set.",
              "", "| cell | " + " | ".join(ARCH_NAMES[a] for a in CROSS_ARCHS) + " |",
              "| --- |" + " --- |" * len(CROSS_ARCHS)]
    for name in cross:
      s = sidecars[name]
      paper = PAPER_CROSS_ARCH.get(s["dataset"], {}).get(s["ipc"], {})
      lines.append(f"| {name} | " + " | ".join(
          f"{_ours(results[name], arch)} ({paper[arch] if arch in paper else '-'})"
          for arch in CROSS_ARCHS) + " |")
  return "\n".join(lines) + "\n"
