"""The run directory: its config guard, metrics.json and the output artefacts.

Layout of a workdir:
  config.json        the result-defining part of the config (a guard: another
                     config in the same workdir is refused, nothing overwritten)
  pool/              Orbax checkpoints, one step per pool member {init, trained}
  distill_ckpt/      Orbax checkpoints: the distillation state and its per-step
                     loss history, one composite item per kept step
  init.npz           the synthetic set as initialised (baseline `init`)
  distilled.npz      stored images, decoded images (uint8), labels, class names
  distilled.png      one row per class;  loss.png: loss curves
  metrics.json       results (schema in README)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np

import jax.numpy as jnp

from ncfm_jax import config_lib
from ncfm_jax import distributed
from ncfm_jax import parameterize
from ncfm_jax.errors import InputError
from ncfm_jax.errors import writing

# Knobs that change how a run executes, not what it computes: they may differ
# between invocations on the same workdir.
RUNTIME_KEYS = frozenset({
    "data.device_limit_mb", "data.data_dir", "data.download",
    "distill.steps_per_call", "distill.use_scan", "distill.unroll",
    "distill.checkpoint_every", "distill.keep_checkpoints",
    "distill.class_sharded", "distill.class_block", "distill.block_loop",
    "distill.real_chunk", "distill.syn_chunk", "distill.freq_chunk", "distill.remat_syn",
    "distill.memory_budget_gb", "distill.plan_timing",
    "pretrain.steps_per_call",
})


class WorkdirError(InputError):
  """The workdir cannot be used with this config (nothing was changed)."""


def check_directory(path: str, flag: str = "--workdir") -> None:
  """Raises WorkdirError when `path`, or the part of it nearest to it that exists,
  is not a directory: no run could be kept there. Writes nothing."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    inside = "" if existing == os.path.abspath(path) else f" ({existing} is a file)"
    raise WorkdirError(f"{flag} {path} is not a directory{inside}")


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def result_defining(config) -> dict:
  """The JSON-able part of `config` that defines what a workdir holds."""
  full = json.loads(config.to_json_best_effort())
  kept = {k: full[k] for k in config_lib.RESULT_DEFINING_SECTIONS if k in full}
  return {k: v for k, v in _flatten(kept).items() if k not in RUNTIME_KEYS}


# Eval keys that choose which evaluations run, not what one of them computes.
EVAL_SELECTION_KEYS = frozenset({"source", "file_factor", "baselines", "num_eval", "archs",
                                 "steps_per_call"})


def eval_settings(eval_config) -> dict:
  """The eval settings an evaluation's accuracy depends on, as JSON stores them.

  Recorded with each architecture's runs in metrics.json, so runs made with
  other settings (soft labels, another step budget) are never pooled."""
  flat = _flatten(json.loads(eval_config.to_json_best_effort()))
  return {k: v for k, v in sorted(flat.items()) if k not in EVAL_SELECTION_KEYS}


def check_eval_settings(workdir: str, section: str, arch: str, recorded: dict,
                        settings: dict) -> None:
  """Raises WorkdirError when `recorded` (metrics.json's `section.arch` entry)
  holds runs made with settings other than `settings`. Writes nothing."""
  stored = recorded.get("settings")
  if not recorded.get("runs") or stored is None:  # no runs, or an older workdir
    return
  diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
  if diff:
    shown = ", ".join(f"eval.{k}: {stored.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
    raise WorkdirError(
        f"{os.path.join(workdir, 'metrics.json')} holds {section}.{arch} runs made with "
        f"other eval settings ({shown}{', ...' if len(diff) > 4 else ''}); use another "
        f"--workdir (a copy of this one without metrics.json keeps its pool and distilled set)")


def check_config(workdir: str, config) -> bool:
  """True when workdir/config.json exists and matches `config`; raises WorkdirError
  when it holds another config. Writes nothing."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, json.JSONDecodeError) as err:
    raise WorkdirError(f"{path} is unreadable ({err}); use another --workdir") from err
  wanted = result_defining(config)
  # A field added since the workdir was written counts as its default there.
  defaults = result_defining(config_lib.base_config())
  stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
  # ... and one that became a runtime setting since no longer defines the run.
  stored = {k: v for k, v in stored.items() if k not in RUNTIME_KEYS}
  diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
  if diff:
    shown = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in diff[:4])
    raise WorkdirError(
        f"{workdir} holds a run with a different config ({shown}"
        f"{', ...' if len(diff) > 4 else ''}); use another --workdir")
  return True


def write_config(workdir: str, config) -> None:
  os.makedirs(workdir, exist_ok=True)
  write_json(os.path.join(workdir, "config.json"), result_defining(config))


def atomic_write(path: str, write, suffix: str = ".tmp") -> None:
  """`write(tmp_path)`, then the temporary file renamed over `path`: a crash or a
  full disk leaves the old file or the new, never half (`errors.WriteError` names
  `path` and the free space; the temporary file is removed).

  Like every writer here, only process 0 of a multi-process run writes."""
  if not distributed.is_primary():
    return
  with writing(path):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=suffix)
    os.close(fd)
    try:
      write(tmp)
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise


def write_json(path: str, obj) -> None:
  """Atomic JSON write (`atomic_write`)."""
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=False)
  atomic_write(path, write)


def read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def update_metrics(workdir: str, **sections) -> dict:
  """Merges `sections` into workdir/metrics.json (atomically) and returns it."""
  path = os.path.join(workdir, "metrics.json")
  metrics = read_json(path, {})
  metrics.update(sections)
  write_json(path, metrics)
  return metrics


def save_npz(path: str, **arrays) -> None:
  """Atomic compressed .npz write (`atomic_write`)."""
  atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays), ".npz")


def to_uint8(images) -> np.ndarray:
  return np.asarray(np.clip(np.round(np.asarray(images) * 255.0), 0, 255), np.uint8)


def save_image_grid(path: str, images: np.ndarray, max_columns: int = 20) -> None:
  """`images` `[C, n, H, W, Ch]` in [0, 1] -> PNG, one row per class."""
  if not distributed.is_primary():
    return
  from PIL import Image  # pylint: disable=g-import-not-at-top
  classes, n, height, width, channels = images.shape
  n = min(n, max_columns)
  grid = np.ones((classes * (height + 2), n * (width + 2), channels), np.float32)
  for c in range(classes):
    for i in range(n):
      top, left = c * (height + 2) + 1, i * (width + 2) + 1
      grid[top:top + height, left:left + width] = images[c, i]
  grid = to_uint8(grid)
  mode = "L" if channels == 1 else "RGB"
  image = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode=mode)
  atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), ".png")


def save_loss_plot(path: str, history: dict) -> None:
  """Loss curves (`history[name]` per step) -> PNG."""
  if not distributed.is_primary():
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = [k for k in ("loss", "calibration") if history.get(k)]
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
  for ax, name in zip(axes[0], names):
    values = np.asarray(history[name], np.float64)
    ax.plot(values, lw=0.5, alpha=0.4)
    window = max(1, len(values) // 50)
    if window > 1:
      smooth = np.convolve(values, np.ones(window) / window, mode="valid")
      ax.plot(np.arange(window - 1, len(values)), smooth, lw=1.5)
    ax.set_title("match loss (sum over classes)" if name == "loss" else "calibration CE")
    ax.set_xlabel("step")
  fig.tight_layout()
  try:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), ".png")
  finally:
    plt.close(fig)


def save_distilled(workdir: str, syn_images: np.ndarray, factor: int, class_names,
                   history: dict) -> None:
  """distilled.npz (stored and decoded images, labels, class names), distilled.png
  and loss.png from the stored synthetic images `[C, ipc, H, W, Ch]` in [0, 1]."""
  classes = syn_images.shape[0]
  decoded = np.asarray(parameterize.decode(
      jnp.asarray(syn_images.reshape((-1,) + syn_images.shape[2:])), factor))
  labels = np.repeat(np.arange(classes), decoded.shape[0] // classes)
  save_npz(os.path.join(workdir, "distilled.npz"), images=syn_images,
           decoded=to_uint8(decoded), labels=labels, class_names=np.asarray(class_names))
  save_image_grid(os.path.join(workdir, "distilled.png"),
                  decoded.reshape((classes, -1) + decoded.shape[1:]))
  if history["loss"]:
    save_loss_plot(os.path.join(workdir, "loss.png"), history)


def distill_summary(history: dict) -> dict:
  """metrics.json's `distill` entry from the checkpointed history."""
  steps = len(history["loss"])
  return {"steps": steps, "seconds": history["seconds"],
          "seconds_per_step": history["seconds"] / max(1, steps),
          "final_loss": float(np.mean(history["loss"][-10:])) if steps else None}
