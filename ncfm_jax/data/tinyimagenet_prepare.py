"""Rearranges the official Tiny ImageNet into the class-folder layout ``load_dataset`` reads.

The official archive (http://cs231n.stanford.edu/tiny-imagenet-200.zip) ships
``train/<wnid>/images/*.JPEG`` but an unsorted ``val/images/*.JPEG`` with the labels in
``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``). This writes::

  DST/train/<wnid>/*.JPEG
  DST/val/<wnid>/*.JPEG

Usage (once)::

  python -m ncfm_jax.data.tinyimagenet_prepare /path/tiny-imagenet-200 /data/tinyimagenet [--link]

then ``data.name=tinyimagenet, data.data_dir=/data/tinyimagenet``. ``--link`` makes hard
links instead of copies (same file system only). The unlabelled test split is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def _place(src: Path, dst: Path, link: bool) -> None:
  dst.parent.mkdir(parents=True, exist_ok=True)
  if link:
    os.link(src, dst)
  else:
    shutil.copyfile(src, dst)


def arrange_tinyimagenet(src: str | os.PathLike, dst: str | os.PathLike, *,
                         link: bool = False) -> dict[str, int]:
  """Writes ``dst/{train,val}/<wnid>/`` from an unpacked ``tiny-imagenet-200`` dir.

  Args:
    src: the official ``tiny-imagenet-200`` directory.
    dst: the output directory (must not exist or be empty).
    link: hard-link instead of copying.

  Returns:
    Number of images written per split, e.g. ``{"train": 100000, "val": 10000}``.

  Raises:
    ValueError: naming the file or class at fault (missing ``wnids.txt``, an
      annotation for a missing image or an unknown class, a class without images).
  """
  src, dst = Path(src), Path(dst)
  if dst.exists() and any(dst.iterdir()):
    raise ValueError(f"{dst} is not empty; choose a new output directory")
  wnids_file = src / "wnids.txt"
  if not wnids_file.is_file():
    raise ValueError(f"{wnids_file} not found: is {src} the tiny-imagenet-200 directory?")
  wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
  written = {"train": 0, "val": 0}
  for wnid in wnids:
    images = sorted((src / "train" / wnid / "images").glob("*.JPEG"))
    if not images:
      raise ValueError(f"{src / 'train' / wnid / 'images'} has no .JPEG images")
    for image in images:
      _place(image, dst / "train" / wnid / image.name, link)
    written["train"] += len(images)
  annotations = src / "val" / "val_annotations.txt"
  if not annotations.is_file():
    raise ValueError(f"{annotations} not found")
  known = set(wnids)
  for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    file_name, wnid = line.split("\t")[:2]
    if wnid not in known:
      raise ValueError(f"{annotations}:{line_number}: class {wnid} not in wnids.txt")
    image = src / "val" / "images" / file_name
    if not image.is_file():
      raise ValueError(f"{annotations}:{line_number}: image {image} not found")
    _place(image, dst / "val" / wnid / file_name, link)
    written["val"] += 1
  missing = [w for w in wnids if not (dst / "val" / w).is_dir()]
  if missing:
    raise ValueError(f"{annotations}: no validation images for classes {missing[:5]}")
  return written


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("src", help="unpacked official tiny-imagenet-200 directory")
  parser.add_argument("dst", help="output directory (new or empty)")
  parser.add_argument("--link", action="store_true", help="hard-link instead of copy")
  args = parser.parse_args(argv)
  written = arrange_tinyimagenet(args.src, args.dst, link=args.link)
  print(f"wrote {written['train']} train and {written['val']} val images to {args.dst}")


if __name__ == "__main__":
  main()
