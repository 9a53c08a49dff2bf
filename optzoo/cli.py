"""The ``optzoo`` command line.

    optzoo list                      # the zoo, grouped by family, with references
    optzoo race                      # Team SGD vs Team Adam on sklearn digits
    optzoo race --optimizers sgdm,adam@3e-3,lookahead:adam --epochs 5 --out out
    optzoo race --dataset fashion-mnist    # needs apt-get install dataset-fashion-mnist
    optzoo lr-find --optimizer sgdm        # LR range test (Smith 2017)
    optzoo table                     # the README's zoo table (markdown)

User errors (unknown optimizer or dataset, an --out that cannot be written,
a missing dataset) exit with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["main"]


class _UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """argparse, but errors are one line (no usage dump)."""

  def error(self, message):
    raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _fail(msg: str, code: int = 2) -> int:
  msg = " ".join(str(msg).split())  # exactly one line
  print(f"optzoo: error: {msg}", file=sys.stderr)
  return code


def _console():
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  return Console()


def _status(info) -> str:
  ref = info.reference.lower()
  exact = any(s in ref for s in ("torch", "optax", "adabound", "pytorch_optimizer",
                                  "flax", "scipy"))
  status = "reference-exact" if exact else "re-derived"
  if info.extra_args:
    status += " · extra args: " + ", ".join(info.extra_args)
  if info.needs_params:
    status += " · needs params"
  return status


def zoo_table_markdown() -> str:
  """The zoo as a markdown table: method, family, reference, status."""
  import optzoo  # pylint: disable=g-import-not-at-top
  rows = ["| method | family | reference | status |", "|---|---|---|---|"]
  for info in optzoo.list_optimizers():
    ref = info.reference.replace("|", "/").replace("\n", " ")
    rows.append(f"| `{info.name}` | {info.family} | {ref} | {_status(info)} |")
  return "\n".join(rows)


def _cmd_list(args) -> int:
  import optzoo  # pylint: disable=g-import-not-at-top
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  from optzoo._src import base  # pylint: disable=g-import-not-at-top

  try:
    infos = optzoo.list_optimizers(family=args.family)
  except ValueError as e:
    return _fail(str(e))
  if args.markdown:
    print(zoo_table_markdown())
    return 0
  console = _console()
  if not infos:
    console.print("The registry is empty.")
    return 0
  for fam in base.FAMILIES:
    group = [i for i in infos if i.family == fam]
    if not group:
      continue
    t = Table(title=f"{fam} ({len(group)})", title_justify="left",
              show_lines=False, expand=False)
    t.add_column("name", style="bold cyan", no_wrap=True)
    t.add_column("summary")
    t.add_column("reference", style="green")
    t.add_column("paper", style="dim")
    for i in group:
      t.add_row(i.name, i.summary, i.reference, i.paper)
    console.print(t)
  console.print(f"{len(infos)} methods. Details: python -c \"import optzoo;"
                " help(optzoo.<name>)\"")
  return 0


def _cmd_table(args) -> int:
  del args
  print(zoo_table_markdown())
  return 0


def _split_names(s: str) -> list[str]:
  return [p.strip() for p in s.split(",") if p.strip()]


def _cmd_race(args) -> int:
  from optzoo._src import race  # pylint: disable=g-import-not-at-top

  specs = _split_names(args.optimizers) if args.optimizers else list(
      race.DEFAULT_OPTIMIZERS)
  # Cheap checks first: names, output folder, dataset -- before any training.
  for spec in specs:
    race.build_optimizer(spec, args.lr)
  out = race.check_out_dir(args.out)
  console = _console()
  show = not args.quiet
  if show:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # pylint: disable=g-import-not-at-top,line-too-long
    progress = Progress(
        TextColumn("[bold]{task.description:>16}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(), console=console, transient=False)
  else:
    progress = None

  def log(s):
    if show:
      console.print(s)

  kwargs = dict(dataset=args.dataset, model=args.model, norm=args.norm,
                epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                lr=args.lr, limit=args.limit, log=log)
  if progress is not None:
    with progress:
      results, config = race.run_race(specs, progress=progress, **kwargs)
  else:
    results, config = race.run_race(specs, **kwargs)

  from rich.table import Table  # pylint: disable=g-import-not-at-top
  t = Table(title=f"optzoo race on {config['dataset']} ({config['model']},"
            f" norm={config['norm']}, {config['epochs']} epochs, batch"
            f" {config['batch_size']}, seed {config['seed']})")
  for col, kw in (("optimizer", dict(style="bold cyan")), ("lr", {}),
                  ("train loss", dict(justify="right")),
                  ("test acc", dict(justify="right")),
                  ("wall time", dict(justify="right")),
                  ("steps/s", dict(justify="right"))):
    t.add_column(col, **kw)
  best = max(r.test_accuracy for r in results)
  for r in results:
    lr = config["learning_rates"].get(r.name)
    acc = f"{100 * r.test_accuracy:.2f}%"
    t.add_row(r.name, "-" if lr is None else f"{lr:g}", f"{r.train_loss:.4f}",
              f"[bold green]{acc}[/]" if r.test_accuracy == best else acc,
              f"{r.wall_time:.1f}s", f"{r.steps_per_sec:.0f}")
  console.print(t)
  png = os.path.join(out, "race.png")
  js = os.path.join(out, "results.json")
  try:
    race.plot_race(results, config, png)
    race.write_results(results, config, js)
  except OSError as e:
    return _fail(f"cannot write results to {out!r}: {e.strerror or e}.")
  console.print(f"wrote {png} and {js}")
  return 0


def _cmd_lr_find(args) -> int:
  from optzoo._src import race  # pylint: disable=g-import-not-at-top

  race.build_optimizer(args.optimizer, 1e-3)  # validates the name early
  out = race.check_out_dir(args.out)
  res = race.run_lr_find(
      args.optimizer, dataset=args.dataset, model=args.model, norm=args.norm,
      batch_size=args.batch_size, seed=args.seed, min_lr=args.min_lr,
      max_lr=args.max_lr, num_steps=args.steps)
  png = os.path.join(out, "lr_find.png")
  try:
    race.plot_lr_find(res, png, title=f"LR range test: {args.optimizer} on"
                     f" {args.dataset}")
  except OSError as e:
    return _fail(f"cannot write {png!r}: {e.strerror or e}.")
  print(f"suggested learning rate for {args.optimizer}: {res.suggestion:.3g}"
        f" (loss fell fastest there; tested {args.min_lr:g}..{args.max_lr:g}"
        f" over {len(res.lrs)} steps)")
  print(f"wrote {png}")
  return 0


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="optzoo", description="optzoo: the optimizer zoo for JAX.")
  sub = p.add_subparsers(dest="command", parser_class=_Parser)

  pl = sub.add_parser("list", help="the zoo, grouped by family, with references")
  pl.add_argument("--family", default=None, help="only this family")
  pl.add_argument("--markdown", action="store_true", help="markdown table")
  pl.set_defaults(fn=_cmd_list)

  pt = sub.add_parser("table", help="the README zoo table (markdown)")
  pt.set_defaults(fn=_cmd_table)

  def common(q):
    q.add_argument("--dataset", default="digits",
                   help="digits (sklearn, default) or fashion-mnist (Debian"
                   " package dataset-fashion-mnist)")
    q.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    q.add_argument("--norm", default="none",
                   help="none|batch|layer|group|instance|weight")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--seed", type=int, default=0)

  pr = sub.add_parser("race", help="train one model with several optimizers")
  common(pr)
  pr.add_argument("--optimizers", default=None,
                  help="comma-separated specs, e.g. sgdm,adam@3e-3,lookahead:adam"
                  " (default: sgdm,nag,adam,adamw,radam,lookahead:adam,swats)")
  pr.add_argument("--epochs", type=int, default=None,
                  help="default 10 (digits) / 2 (fashion-mnist)")
  pr.add_argument("--lr", type=float, default=None,
                  help="learning rate for every optimizer without @lr")
  pr.add_argument("--limit", type=int, default=None,
                  help="use only the first N training examples")
  pr.add_argument("--out", default="race_out", help="folder for race.png and"
                  " results.json (default ./race_out)")
  pr.add_argument("--quiet", action="store_true", help="no progress bars")
  pr.set_defaults(fn=_cmd_race)

  pf = sub.add_parser("lr-find", help="LR range test on a dataset")
  common(pf)
  pf.add_argument("--optimizer", default="sgdm")
  pf.add_argument("--min-lr", type=float, default=1e-5)
  pf.add_argument("--max-lr", type=float, default=10.0)
  pf.add_argument("--steps", type=int, default=100)
  pf.add_argument("--out", default="race_out")
  pf.set_defaults(fn=_cmd_lr_find)
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of the ``optzoo`` console script; returns the exit status."""
  from optzoo._src.data import DatasetError  # pylint: disable=g-import-not-at-top
  from optzoo._src.race import RaceError  # pylint: disable=g-import-not-at-top

  parser = _parser()
  try:
    args = parser.parse_args(argv)
    if getattr(args, "fn", None) is None:
      parser.print_help()
      return 0
    return int(args.fn(args) or 0)
  except (_UsageError, RaceError, DatasetError) as e:
    return _fail(str(e))
  except KeyboardInterrupt:
    return _fail("interrupted.", 130)
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("OPTZOO_DEBUG"):
      raise
    return _fail(f"{type(e).__name__}: {e} (set OPTZOO_DEBUG=1 for the"
                 " traceback)", 1)


if __name__ == "__main__":
  sys.exit(main())
