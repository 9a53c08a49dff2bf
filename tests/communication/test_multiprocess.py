"""A real multi-process JAX cluster on localhost (gloo CPU collectives).

Three launches of ``tests/communication/mp_worker.py`` (JAX startup dominates, so each
launch runs all its configurations):

1. 2 processes x 4 devices: train (adam, lookahead(adam), koala, lars/lamb
   when present; data parallel and fully sharded; PowerSGD in shard_map),
   then an Orbax checkpoint at step 10 and the continuation;
2. 1 process x 8 devices: the same training (the reference), and a restore
   of the 2-process checkpoint onto one process + the continuation;
3. 2 processes x 4 devices: restore + the continuation;
4. 4 processes x 2 devices: adam, data parallel only (a smoke run).

Checks: 2-process training equals the 1-process run (<= 1e-6 relative,
float32, 50 steps); the restored trees equal the saved ones bit for bit, and
both continuations equal the uninterrupted 2-process one bit for bit.
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest

import multiprocess

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mp_worker.py")
TIMEOUT = float(os.environ.get("OPTZOO_MP_TIMEOUT", "300"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("mp_out")
  ckpt = tmp_path_factory.mktemp("mp_ckpt")
  env = {"PYTHONPATH": os.path.dirname(os.path.dirname(HERE)) + os.pathsep
         + os.environ.get("PYTHONPATH", "")}
  common = ["--out", str(out), "--ckpt", str(ckpt)]
  for nproc, ndev, mode in ((2, 4, "train,save"), (1, 8, "train,restore"),
                            (2, 4, "restore"), (4, 2, "smoke")):
    t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    multiprocess.launch(WORKER, nproc, ndev, ["--mode", mode, *common],
                        timeout=TIMEOUT, env=env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{nproc} x {ndev} {mode}: wall {time.monotonic() - t0:.1f}s cpu"
          f" {r1.ru_utime - r0.ru_utime:.1f}s user {r1.ru_stime - r0.ru_stime:.1f}s sys")
  load = lambda name: dict(np.load(os.path.join(out, name)))
  return {"train2": load("train_2.npz"), "train1": load("train_1.npz"),
          "save": load("save.npz"), "restore1": load("restore_1.npz"),
          "restore2": load("restore_2.npz"), "smoke4": load("train_4_adam_dp.npz")}


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.slow  # the clusters of `runs`: ~100 s
def test_two_processes_equal_one_process(runs):
  two, one = runs["train2"], runs["train1"]
  assert set(two) == set(one)
  configs = sorted({k.split("/")[0] + "/" + k.split("/")[1] for k in two
                    if k.count("/") >= 2})
  assert {"adam/dp", "adam/fsdp", "lookahead_adam/dp", "lookahead_adam/fsdp",
          "koala/dp", "koala/fsdp", "psgd/shard_map"} <= set(configs), configs
  for k in two:
    assert two[k].dtype != np.float64
    if k.endswith("losses"):
      assert two[k].shape == (50,)
      assert two[k][-1] < two[k][0], k   # it trains
    # PowerSGD's Gram-Schmidt amplifies float32 round-off (the all-reduce
    # order differs between gloo and the in-process collectives).
    tol = 1e-2 if k.startswith("psgd/") else 1e-6
    assert _rel(two[k], one[k]) <= tol, (k, _rel(two[k], one[k]))


@pytest.mark.slow  # the clusters of `runs`: ~100 s
def test_four_processes_equal_one_process(runs):
  four, one = runs["smoke4"], runs["train1"]
  assert four and all(k.startswith("adam/dp/") for k in four)
  for k in four:
    assert _rel(four[k], one[k]) <= 1e-6, k


@pytest.mark.slow  # the clusters of `runs`: ~100 s
def test_fsdp_equals_dp(runs):
  two = runs["train2"]
  for k in two:
    if "/fsdp/" in k:
      assert _rel(two[k], two[k.replace("/fsdp/", "/dp/")]) <= 1e-5, k


@pytest.mark.slow  # the clusters of `runs`: ~100 s
def test_powersgd_communicates_less(runs):
  nbytes = int(np.max(runs["train2"]["psgd/comm_bytes"]))
  dense = 4 * (16 * 32 + 32 + 32 * 32 + 32 + 32 * 8 + 8)
  assert nbytes < dense / 2, (nbytes, dense)


@pytest.mark.slow  # the clusters of `runs`: ~100 s
def test_orbax_round_trip_across_processes(runs):
  save = runs["save"]
  for name in ("restore2", "restore1"):
    got = runs[name]
    assert bool(got["shardings_ok"]), name
    for k in save:
      np.testing.assert_array_equal(got[k], save[k], err_msg=f"{name}: {k}")


def test_launcher_kills_a_hung_cluster(tmp_path):
  script = tmp_path / "hang.py"
  script.write_text("import time, os\nif os.environ['OPTZOO_PROCESS_ID'] == '1':\n"
                    "  raise SystemExit(3)\ntime.sleep(600)\n")
  with pytest.raises(multiprocess.LaunchError, match="failed"):
    multiprocess.launch(str(script), 2, 1, timeout=60)
  script.write_text("import time\ntime.sleep(600)\n")
  with pytest.raises(multiprocess.LaunchError, match="timed out"):
    multiprocess.launch(str(script), 2, 1, timeout=1)


def test_launcher_raises_when_all_processes_fail_between_polls(tmp_path, monkeypatch):
  real_sleep = multiprocess.time.sleep
  # Polls 1.5 s apart: both processes exit (with errors) between two polls.
  monkeypatch.setattr(multiprocess.time, "sleep", lambda s: real_sleep(1.5))
  script = tmp_path / "fail.py"
  script.write_text("raise SystemExit(int(__import__('os').environ['OPTZOO_PROCESS_ID']) + 2)\n")
  with pytest.raises(multiprocess.LaunchError, match="failed"):
    multiprocess.launch(str(script), 2, 1, timeout=60)
  script.write_text("pass\n")
  assert [r.returncode for r in multiprocess.launch(str(script), 2, 1, timeout=60)] == [0, 0]
