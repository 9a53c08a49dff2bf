"""The ``optzoo`` command line: list, table, race, lr-find, error handling."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import optzoo
from optzoo.apps import cli
from optzoo.apps import race


def _write_idx(directory, n=64, hw=28, seed=0):
  """A tiny fake Fashion-MNIST in the Debian package's layout (IDX .gz)."""
  import gzip
  rng = np.random.default_rng(seed)
  imgs = rng.integers(0, 256, size=(n, hw, hw), dtype=np.uint8)
  labels = rng.integers(0, 10, size=n, dtype=np.uint8)
  for stem in ("train", "t10k"):
    with gzip.open(os.path.join(directory, f"{stem}-images-idx3-ubyte.gz"), "wb") as f:
      f.write((2051).to_bytes(4, "big") + n.to_bytes(4, "big")
              + hw.to_bytes(4, "big") + hw.to_bytes(4, "big") + imgs.tobytes())
    with gzip.open(os.path.join(directory, f"{stem}-labels-idx1-ubyte.gz"), "wb") as f:
      f.write((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.tobytes())

QUICK = ["--epochs", "1", "--limit", "256", "--batch-size", "32", "--quiet"]


def _run(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def _assert_one_line_error(code, err, *fragments):
  assert code != 0
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith("optzoo: error:"), err
  assert "Traceback" not in err
  for f in fragments:
    assert f in lines[0], (f, lines[0])


# ---------------------------------------------------------------------------
# list / table
# ---------------------------------------------------------------------------


def test_list_groups_by_family_with_references(capsys):
  code, out, _ = _run(capsys, "list")
  assert code == 0
  infos = optzoo.list_optimizers()
  families = []
  for i in infos:
    if i.family not in families:
      families.append(i.family)
  # every family appears as a title, in registry order, with its methods
  lines = [l.strip() for l in out.splitlines()]
  counts = {f: sum(i.family == f for i in infos) for f in families}
  positions = [lines.index(f"{f} ({counts[f]})") for f in families]
  assert positions == sorted(positions)
  for name in ("adam", "sgd", "radam"):
    assert name in out
  assert "torch.optim.Adam" in out
  code, out, err = _run(capsys, "list", "--family", "Team Zoo")
  _assert_one_line_error(code, err, "family")


def test_table_is_markdown_for_every_method(capsys):
  code, out, _ = _run(capsys, "table")
  assert code == 0
  lines = out.strip().splitlines()
  assert lines[0] == "| method | family | reference | verified against | status |"
  assert len(lines) == 2 + len(optzoo.list_optimizers())
  row = next(l for l in lines if l.startswith("| `adam` |"))
  assert "Team Adam" in row and "torch.optim.Adam" in row and "reference-exact" in row
  assert all(l.count("|") == 6 for l in lines)


def test_no_command_prints_help(capsys):
  code, out, _ = _run(capsys)
  assert code == 0 and "race" in out and "lr-find" in out


# ---------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------


def test_parse_and_build_specs():
  assert race.parse_spec("lookahead:adam@3e-3") == (["lookahead", "adam"], 3e-3)
  assert race.parse_spec(" SGDM ") == (["sgdm"], None)
  tx, lr = race.build_optimizer("sgdm")
  assert lr == race.PRESETS["sgdm"][2]
  _, lr = race.build_optimizer("adam@0.02", lr=0.5)
  assert lr == 0.02  # the spec's @lr wins over --lr
  _, lr = race.build_optimizer("adam", lr=0.5)
  assert lr == 0.5
  for bad, frag in (("adamm", "unknown method 'adamm'"), ("adam@x", "bad learning rate"),
                    ("adam@-1", "must be > 0"), ("lookahead:", "bad optimizer spec"),
                    ("scale_by_adam", "not an optimizer"), ("sgd:adam", "not a wrapper")):
    with pytest.raises(race.RaceError, match=frag):
      race.build_optimizer(bad)


def test_default_optimizers_resolve_through_registry():
  for spec in race.DEFAULT_OPTIMIZERS:
    tx, _ = race.build_optimizer(spec)
    assert hasattr(tx, "init") and hasattr(tx, "update")


# ---------------------------------------------------------------------------
# race
# ---------------------------------------------------------------------------


def _results(path):
  with open(os.path.join(path, "results.json")) as f:
    return json.load(f)


def test_race_same_seed_same_numbers(capsys, tmp_path):
  opts = "sgdm,adam@3e-3"
  a, b, c = (str(tmp_path / n) for n in "abc")
  code, out, err = _run(capsys, "race", "--optimizers", opts, "--seed", "1", "--out", a, *QUICK)
  assert code == 0, err
  # the final table: one row per optimizer with loss, accuracy, time, steps/s
  for col in ("train loss", "test acc", "compile", "steps/s", "wall time"):
    assert col in out
  assert "compile: seconds to compile one jitted epoch" in " ".join(out.split())
  assert "sgdm" in out and "adam@3e-3" in out
  assert _run(capsys, "race", "--optimizers", opts, "--seed", "1", "--out", b, *QUICK)[0] == 0
  assert _run(capsys, "race", "--optimizers", "sgdm", "--seed", "2", "--out", c, *QUICK)[0] == 0
  ra, rb, rc = _results(a), _results(b), _results(c)
  assert ra["results"] == rb["results"]  # bit-identical numbers and curves
  assert ra["results"]["sgdm"]["train_loss_curve"] != rc["results"]["sgdm"]["train_loss_curve"]
  r = ra["results"]["adam@3e-3"]
  assert ra["config"]["learning_rates"]["adam@3e-3"] == 3e-3
  assert r["steps"] == 256 // 32 == len(r["train_loss_curve"])
  assert 0.0 <= r["test_accuracy"] <= 1.0 and np.isfinite(r["train_loss"])
  # the numbers in the table are the ones in the JSON
  assert f"{100 * r['test_accuracy']:.2f}%" in out
  with open(os.path.join(a, "race.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert set(ra["timings"]) == {"sgdm", "adam@3e-3"}
  for t in ra["timings"].values():
    assert 0 < t["compile_time"] < t["wall_time"] and t["steps_per_sec"] > 0
  assert ra["timings_note"] == race.TIMING_NOTE
  with open(os.path.join(a, "results.md")) as f:
    md = f.read()
  assert "| `adam@3e-3` | 0.003 |" in md and race.TIMING_NOTE in md


def test_race_epoch_scan_matches_the_flax_loop():
  """The race's compiled epoch (lax.scan) = optzoo.nn.fit's step-by-step loop."""
  from optzoo import nn as zn
  from optzoo.apps import data as zdata
  data = zdata.load_dataset("digits", seed=0).subset(n_train=192)
  net = zn.make_model("mlp", norm="batch", num_classes=data.num_classes)
  tx = optzoo.adam(3e-3)
  got = race._fit_scanned(net, tx, data, epochs=2, batch_size=32, seed=0)  # pylint: disable=protected-access
  want = zn.fit(net, tx, data, epochs=2, batch_size=32, seed=0)
  assert got["steps"] == want["steps"] == 12
  for k in ("train_loss", "epoch_train_loss", "test_loss"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
  assert got["test_accuracy"] == want["test_accuracy"]
  assert got["compile_time"] > 0 and got["steps_per_sec"] > 0


def test_race_learns(tmp_path):
  """Two epochs on all of digits: Team SGD and Team Adam both reach > 85 %."""
  results, config = race.run_race(["sgdm", "adam@3e-3"], epochs=2, batch_size=32)
  assert config["n_train"] == 1438 and config["epochs"] == 2
  for r in results:
    assert r.test_accuracy > 0.85, (r.name, r.test_accuracy)
    assert r.train_loss < 0.5 * r.train_loss_curve[0]


@pytest.mark.slow
def test_race_default_optimizers_run(capsys, tmp_path):
  """Every default optimizer (incl. lookahead:adam and swats) trains."""
  code, out, err = _run(capsys, "race", "--epochs", "1", "--limit", "640", "--out",
                        str(tmp_path), "--quiet")
  assert code == 0, err
  res = _results(str(tmp_path))
  assert list(res["results"]) == list(race.DEFAULT_OPTIMIZERS)
  for name, r in res["results"].items():
    assert r["train_loss"] < r["train_loss_curve"][0], name


@pytest.mark.parametrize("argv,fragments", [
    (["--optimizers", "sgdm,adamx"], ["unknown method 'adamx'", "Did you mean"]),
    (["--optimizers", "lookahead:"], ["bad optimizer spec"]),
    (["--dataset", "cifar10"], ["unknown dataset 'cifar10'", "digits"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--epochs", "two"], ["invalid int value"]),
    (["--batch-size", "5000"], ["larger than the training set"]),
    (["--norm", "spectral"], ["norm"]),
    (["--model", "resnet"], ["invalid choice"]),
])
def test_race_user_errors_are_one_line(capsys, tmp_path, argv, fragments):
  code, _, err = _run(capsys, "race", "--out", str(tmp_path), "--quiet", *argv)
  _assert_one_line_error(code, err, *fragments)


def test_race_unwritable_out(capsys, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  code, _, err = _run(capsys, "race", "--out", str(blocker / "sub"), *QUICK)
  _assert_one_line_error(code, err, "cannot write to --out")


def test_fashion_mnist_missing_and_present(capsys, tmp_path, monkeypatch):
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("OPTZOO_FASHION_MNIST_DIR", str(empty))
  code, _, err = _run(capsys, "race", "--dataset", "fashion-mnist", "--out",
                      str(tmp_path / "o"), *QUICK)
  _assert_one_line_error(code, err, "Fashion-MNIST not found",
                         "apt-get install -y dataset-fashion-mnist")
  full = tmp_path / "fmnist"
  full.mkdir()
  _write_idx(str(full), n=64)
  monkeypatch.setenv("OPTZOO_FASHION_MNIST_DIR", str(full))
  code, out, err = _run(capsys, "race", "--dataset", "fashion-mnist", "--optimizers",
                        "adam", "--out", str(tmp_path / "o"), *QUICK)
  assert code == 0, err
  res = _results(str(tmp_path / "o"))
  assert res["config"]["dataset"] == "fashion-mnist" and res["config"]["n_train"] == 64


def test_console_script_error_has_no_traceback(tmp_path):
  """The real process: exit status 2, one stderr line, no traceback."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-m", "optzoo.apps.cli", "race", "--optimizers", "nope",
                      "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                     timeout=120)
  assert p.returncode == 2
  _assert_one_line_error(p.returncode, p.stderr, "unknown method 'nope'")


# ---------------------------------------------------------------------------
# lr-find
# ---------------------------------------------------------------------------


def test_lr_find(capsys, tmp_path):
  code, out, err = _run(capsys, "lr-find", "--optimizer", "sgdm", "--steps", "40",
                        "--min-lr", "1e-4", "--max-lr", "10", "--out", str(tmp_path))
  assert code == 0, err
  line = next(l for l in out.splitlines() if l.startswith("suggested learning rate"))
  lr = float(line.split(":")[1].split()[0])
  assert 1e-4 <= lr <= 10
  assert os.path.getsize(tmp_path / "lr_find.png") > 1000
  code, _, err = _run(capsys, "lr-find", "--optimizer", "adamq", "--out", str(tmp_path))
  _assert_one_line_error(code, err, "unknown method 'adamq'")
  code, _, err = _run(capsys, "lr-find", "--min-lr", "1", "--max-lr", "0.1", "--out",
                      str(tmp_path))
  _assert_one_line_error(code, err, "--min-lr")


# ---------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/apps/ -> repo root
README = os.path.join(ROOT, "README.md")


def test_readme_starts_with_the_two_setup_commands():
  with open(README) as f:
    text = f.read()
  first_block = text.split("```bash", 1)[1].split("```", 1)[0]
  assert text.index("```bash") < text.index("\n## ")  # before any section
  assert ('python3 -m venv .venv && .venv/bin/pip install -e ".[apps]" && .venv/bin/optzoo race'
          in first_block)
  assert ('python3 -m venv .venv && .venv/bin/pip install -e ".[test]" &&'
          " .venv/bin/python -m pytest -q -n 2" in first_block)
  assert "docs/race.png" in text
  png = os.path.join(os.path.dirname(README), "docs", "race.png")
  assert 10_000 < os.path.getsize(png) < 200_000


def test_readme_quickstart_runs(capsys):
  with open(README) as f:
    text = f.read()
  code = text.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
  assert len([l for l in code.splitlines() if l.strip()]) <= 22  # "a 20-line quickstart"
  exec(compile(code, "README.md quickstart", "exec"), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  acc = float(out.split("test accuracy")[1].strip().rstrip("%"))
  assert acc > 90.0, out


# ---------------------------------------------------------------------------
# Start-up cost: --help, usage errors and `list` import no JAX
# ---------------------------------------------------------------------------

_NO_JAX = r"""
import sys
from optzoo.apps import cli
argv = sys.argv[1:]
try:
  code = cli.main(argv)
except SystemExit as e:  # argparse's --help
  code = e.code
heavy = sorted(m for m in ("jax", "optax", "flax", "chex") if m in sys.modules)
print("HEAVY", heavy, "CODE", code)
"""


def _cli_process(*args, code=None):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, "-c", code, *args] if code else [
      sys.executable, "-m", "optzoo.apps.cli", *args]
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                        cwd=ROOT)


@pytest.mark.parametrize("argv,code", [
    (["--help"], 0), (["race", "--help"], 0), (["lr-find", "--help"], 0),
    (["race", "--epochs", "two"], 2), (["bogus"], 2), (["list"], 0), (["table"], 0),
    (["list", "--family", "Team Zoo"], 2), (["race", "--optimizers", "adamx"], 2),
])
def test_help_usage_errors_and_list_import_no_jax(argv, code):
  p = _cli_process(*argv, code=_NO_JAX)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"HEAVY [] CODE {code}" in p.stdout, (p.stdout[-500:], p.stderr[-2000:])


def test_cli_latency():
  """Generous bounds for a loaded CI machine (about 0.1 s and 0.5 s on an idle one)."""
  import time
  for argv, bound in ((["--help"], 2.0), (["list"], 5.0)):
    t = time.perf_counter()
    p = _cli_process(*argv)
    wall = time.perf_counter() - t
    assert p.returncode == 0, p.stderr[-2000:]
    assert wall < bound, f"optzoo {' '.join(argv)} took {wall:.1f} s (bound {bound} s)"


def _fields(metas):
  return [{f: getattr(m, f) for f in cli._META_FIELDS} for m in metas]  # pylint: disable=protected-access


def test_zoo_snapshot_is_current():
  """`list`/`table` read optzoo/apps/_zoo_snapshot.py: it must match the registry."""
  snap = cli.snapshot_zoo()
  regen = "regenerate it: python -m optzoo.apps.cli table --write-snapshot"
  assert snap is not None, f"optzoo/apps/_zoo_snapshot.py is stale; {regen}"
  from optzoo._src import registry
  assert snap[0] == registry.FAMILIES, regen
  live = optzoo.list_optimizers()
  assert _fields(snap[1]) == _fields(live), regen
  assert _fields(cli.zoo(live=True)[1]) == _fields(live)


def test_stale_snapshot_falls_back_to_the_live_registry(monkeypatch, capsys):
  fresh = cli.zoo()
  monkeypatch.setattr(cli, "_public_names", lambda: ("a_new_method",))
  assert cli.snapshot_zoo() is None
  assert _fields(cli.zoo()[1]) == _fields(optzoo.list_optimizers()) == _fields(fresh[1])
  assert cli.zoo("research")[1] and all(m.family == "research" for m in cli.zoo("research")[1])
  code, out, _ = _run(capsys, "table")
  assert code == 0 and len(out.strip().splitlines()) == 2 + len(fresh[1])


def test_check_names_says_what_get_info_says():
  names = [i.name for i in optzoo.list_optimizers()]
  for spec, bad in (("adamx", "adamx"), ("lookahead:sgdmm@0.1", "sgdmm"), ("zzz", "zzz")):
    with pytest.raises(race.RaceError) as fast:
      race.check_names(spec, names)
    with pytest.raises(race.RaceError) as slow:
      race.build_optimizer(spec)
    assert str(fast.value) == str(slow.value) and repr(bad) in str(fast.value)
  for spec in race.DEFAULT_OPTIMIZERS + ("adam@1e-3", "sgd:adam"):
    race.check_names(spec, names)  # known names pass (wrapper checks come later)
