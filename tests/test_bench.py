"""The benchmarks' command line and shared helpers (tests/test_ncfd.py runs `ncfd`)."""

import argparse
import importlib.util
import mmap
import os
import re
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax import errors
from ncfm_jax.bench import __main__ as cli
from ncfm_jax.bench import common
from ncfm_jax.bench import step as step_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY_NCFD = ["ncfd", "--num-real=8", "--num-syn=2", "--dim=4", "--runs=1", "--warmup=0"]


def test_help_lists_the_subcommands():
  done = subprocess.run([sys.executable, "-m", "ncfm_jax.bench", "--help"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  # usage: python -m ncfm_jax.bench [-h] {ncfd,step,scaling} ...
  listed = set(re.search(r"\{(.*?)\}", done.stdout).group(1).split(","))
  # `norm` is listed exactly where its module is installed.
  norm = {"norm"} if importlib.util.find_spec("ncfm_jax.bench.norm") else set()
  assert listed == {"ncfd", "step", "scaling", "memory", "blocks"} | norm


def test_only_the_chosen_subcommand_is_imported(tmp_path, monkeypatch):
  (tmp_path / "fake_bench.py").write_text(textwrap.dedent("""
      CALLS = []
      def add_arguments(parser):
        parser.add_argument("--x", type=int, default=0)
      def run_from_args(args):
        CALLS.append(args.x)
        return [{"x": args.x}]
  """))
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "fake_bench", raising=False)
  monkeypatch.setitem(cli.SUBCOMMANDS, "fake", cli.Subcommand("fake_bench", "a fake"))
  monkeypatch.setitem(cli.SUBCOMMANDS, "absent", cli.Subcommand("no_such_bench", "gone"))
  with pytest.raises(SystemExit):  # --help of another subcommand: fake_bench untouched
    cli.main(["ncfd", "--help"])
  assert "fake_bench" not in sys.modules
  assert "absent" not in cli.available()
  assert cli.main(["fake", "--x=3"]) == 0
  assert sys.modules["fake_bench"].CALLS == [3]


def test_run_child_forces_the_device_count_and_reads_the_rows():
  row, = common.run_child([*_TINY_NCFD, "--single=20:none"], cpu_devices=2)
  assert row["num_devices"] == 2 and row["F"] == 20 and row["device"].startswith("cpu")
  with pytest.raises(RuntimeError, match="benchmark subprocess failed"):
    common.run_child(["ncfd", "--no-such-flag"])


def test_markdown_table():
  table = common.markdown_table([{"F": 1024, "ms": 0.5, "mib": 12.34}, {"F": 16}],
                                ["F", "ms", "mib"])
  assert table.splitlines() == ["| F | ms | mib |", "|---|---|---|",
                                "| 1024 | 0.5 | 12.3 |", "| 16 | - | - |"]


def test_time_interleaved_takes_turns_and_threads_donated_state():
  calls = []
  donating = jax.jit(lambda state, inc: (state + inc, state), donate_argnums=(0,))
  run = common.ThreadedRun(lambda state, inc: (calls.append("a"), donating(state, inc))[1],
                           jnp.zeros(()), 1.0)

  def slow_first_call():  # as a compiling first call is
    calls.append("b")
    time.sleep(0.2 if len(calls) == 2 else 0.0)

  timings = common.time_interleaved({"a": run, "b": slow_first_call}, repeats=3, warmup=2)
  assert calls == ["a", "b"] * 5
  assert all(len(t.times) == 3 for t in timings.values())
  assert timings["b"].first_call_s >= 0.2 > max(timings["b"].times)
  assert float(run.outputs[0]) == 5.0  # each call got the state the last returned
  assert common.time_calls(lambda: None, 2, warmup=0).first_call_s is None


def test_peak_memory_is_positive():
  assert common.peak_rss_bytes() > 0 and common.peak_memory_mb() > 0
  with common.RssWindow() as window:
    # Fresh pages from the kernel: a malloc'd block may reuse memory the allocator
    # (tcmalloc in the test processes) already holds resident.
    block = mmap.mmap(-1, 64 * common.MIB)
    for offset in range(0, len(block), mmap.PAGESIZE):
      block[offset] = 1  # touch every page
  block.close()
  assert window.increase_bytes >= (32 * common.MIB if window.exact else 0)


def test_workload_by_name():
  assert step_bench.workload_by_name("cifar10_ipc10_small").batch_real == 64
  assert step_bench.workload_by_name("cifar10_ipc10") is step_bench.WORKLOADS["cifar10_ipc10"]
  with pytest.raises(ValueError, match="unknown workload"):
    step_bench.workload_by_name("cifar11")


def test_step_overrides_take_the_type_of_their_field():
  parse = step_bench.parse_override
  assert parse("augment=none") == ("augment", "none")  # a strategy, not None
  assert parse("freq_chunk=none") == ("freq_chunk", None)
  assert parse("block_loop=none") == ("block_loop", None)  # a str field that may be None
  assert parse("block_loop=scan") == ("block_loop", "scan")
  assert parse("freq_chunk=1024") == ("freq_chunk", 1024)
  assert parse("memory_budget_gb=0.6") == ("memory_budget_gb", 0.6)
  assert parse("remat_syn=true") == ("remat_syn", True)
  for bad, culprit in [("fre_chunk=8", "no field 'fre_chunk'"), ("freq_chunk", "no field"),
                       ("freq_chunk=abc", "takes an int"), ("remat_syn=maybe", "boolean")]:
    with pytest.raises(errors.InputError, match=culprit):
      parse(bad)


@pytest.mark.parametrize("argv, culprit", [
    (["step", "--set=fre_chunk=8"], "--set=fre_chunk=8: the distill config has no field"),
    (["step", "--repeats=3"], "--repeats must be >= 5"),
    (["step", "--workload=cifar11"], "unknown --workload 'cifar11'"),
    (["memory", "--cells=cifar10:x"], "--cells: 'cifar10:x' is not dataset:ipc"),
    (["memory", "--cells=cifar11:1"], "--cells=cifar11:1: config 'configs/cifar11.py'"),
    (["memory", "--budgets=-1"], "--budgets: '-1' is below"),
    (["scaling", "--overrides={\"wdth\": 8}"], "not an object of Workload fields"),
    (["scaling", "--layouts=dp,xx"], "--layouts: unknown xx"),
    (["ncfd", "--freqs=1k"], "--freqs: '1k' is not an int"),
])
def test_bad_flags_are_refused_in_one_line_before_measuring(argv, culprit, capsys,
                                                           monkeypatch):
  monkeypatch.chdir(ROOT)  # configs/ of the repository
  assert cli.main(argv) == 2  # python -m ncfm_jax.bench exits with it
  out, err = capsys.readouterr()
  line, = err.strip().splitlines()
  assert line.startswith(f"python -m ncfm_jax.bench {argv[0]}: ") and culprit in line
  assert not out.strip()  # nothing measured, no child started


def test_parse_list_names_the_flag_and_the_value():
  assert common.parse_list("1, 2,,4", int, "--n") == [1, 2, 4]
  for text, culprit in [("1,x", "--n: 'x' is not an int"), ("0", "--n: '0' is below 1"),
                        (" , ", "--n: no value given")]:
    with pytest.raises(errors.InputError, match=culprit):
      common.parse_list(text, int, "--n", minimum=1)


@pytest.mark.slow
@pytest.mark.parametrize("use_scan", [False, True])  # CPU's default, accelerators'
def test_step_measure_reports_the_documented_keys(use_scan):
  tiny = step_bench.Workload("tiny", classes=2, image_size=8, channels=1, depth=1, ipc=1,
                             batch_real=2, num_freqs=16, width=4, pool_size=1,
                             images_per_class=4)
  row = step_bench.measure(tiny, steps_per_call=2, repeats=2, use_scan=use_scan)
  assert row["use_scan"] == use_scan
  assert row["gflops_per_step"] > 0 and row["seconds_per_step"]["median"] > 0
  # Call by call against the matmul timed right after it, then the median.
  fractions = [row["gflops_per_step"] / seconds / rate for seconds, rate in
               zip(row["seconds_per_step"]["all"], row["matmul_gflops_per_call"])]
  assert len(fractions) == 2
  assert row["fraction_of_matmul"] == pytest.approx(float(np.median(fractions)))
  assert row["peak_memory_mb"] > 0 and row["first_call_seconds"] > 0
  assert set(row) >= {"seconds_per_step", "gflops_per_step", "achieved_gflops",
                      "matmul_gflops", "fraction_of_matmul", "peak_memory_mb"}


@pytest.mark.slow
def test_scaling_train_cases_compile_nothing_after_the_warm_up_call(caplog):
  from ncfm_jax.bench import scaling  # pylint: disable=g-import-not-at-top
  # One step per call: the state fed back is first seen by the first timed call.
  cases = scaling._train_cases(1, batch_size=4, num_examples=8, steps=1, width=2, depth=1)
  for _, run in cases.values():
    jax.block_until_ready(run())
  caplog.clear()
  with jax.log_compiles(True), caplog.at_level("WARNING"):
    for _, run in cases.values():
      jax.block_until_ready(run())
  assert not [r.getMessage()[:80] for r in caplog.records if "Compiling" in r.getMessage()]


def test_every_memory_cell_has_its_config():
  """`bench memory` builds each paper cell from configs/ at the release's real batch."""
  from ncfm_jax.bench import memory as memory_bench
  for dataset, ipc in memory_bench.CELLS:
    config = memory_bench.cell_config(dataset, ipc)
    assert config.distill.ipc == ipc
    assert config.distill.batch_real == memory_bench.RELEASE_BATCH_REAL



def _blocks_args(**overrides) -> argparse.Namespace:
  flags = dict(batch=2, width=4, depth=2, image_size=8, channels=3, repeats=1, seed=0,
               matmul_size=64, json=None)
  return argparse.Namespace(**{**flags, **overrides})


def test_blocks_cover_the_network_and_their_shares_sum_to_one():
  """`bench blocks`: block d sees `[B, S / 2^d, S / 2^d, C_d]`, so the blocks' FLOPs
  add up to the whole network's in both passes."""
  from ncfm_jax.bench import blocks  # pylint: disable=g-import-not-at-top
  assert blocks.block_shapes(32, 3, 128, 3) == [(32, 3, 0), (16, 128, 1), (8, 128, 2)]
  rows = blocks.run_from_args(_blocks_args())
  assert len(rows) == len(blocks.PASSES) * (2 + 1)
  for name in blocks.PASSES:
    block_rows = [r for r in rows if r["pass"] == name and r["block"] != "network"]
    network, = [r for r in rows if r["pass"] == name and r["block"] == "network"]
    assert [r["input_shape"] for r in block_rows] == [[2, 8, 8, 3], [2, 4, 4, 4]]
    assert sum(r["gflops"] for r in block_rows) == pytest.approx(network["gflops"], rel=0.02)
    assert sum(r["share_of_time"] for r in block_rows) == pytest.approx(1.0)
    assert sum(r["share_of_flops"] for r in block_rows) == pytest.approx(1.0)
  first = {r["pass"]: r for r in rows if r["block"] == "block0"}
  # The input gradient is counted: about twice the forward's FLOPs.
  assert first["forward+input_grad"]["gflops"] > 1.5 * first["forward"]["gflops"]
  with pytest.raises(errors.InputError, match="too small for --depth"):
    blocks.run_from_args(_blocks_args(depth=4))
