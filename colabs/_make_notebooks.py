"""Writes the colabs/*.ipynb notebooks (without outputs) from the text below.

    python colabs/_make_notebooks.py          # regenerate all notebooks

Every notebook gets the same header: a title, a Colab badge, what it shows,
an install cell that works in Colab (skipped when optzoo is importable) and a
``FAST`` flag read from ``OPTZOO_FAST`` (CI sets ``OPTZOO_FAST=1``: smaller
runs, same code paths). Edit the notebooks here, not in Jupyter.
"""
from __future__ import annotations

import os
import textwrap

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))
ORG = "optzoo"
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/{org}/optzoo/blob/main/colabs/{name})")

INSTALL = '''\
# Install optzoo in Colab; skipped when it is already importable (local, CI).
import importlib.util
if importlib.util.find_spec("optzoo") is None:
    %pip install -q git+https://github.com/optzoo/optzoo'''

SETUP = '''\
import os, time
FAST = os.environ.get("OPTZOO_FAST", "0") == "1"   # CI: OPTZOO_FAST=1 -> small runs
import jax, jax.numpy as jnp, numpy as np, optax
import matplotlib.pyplot as plt
import optzoo
from optzoo import nn as zn
data = zn.load_digits()          # sklearn digits: real 8x8 handwritten digits, offline
print(data, "| FAST =", FAST)'''


def md(s):
  return ("md", textwrap.dedent(s).strip("\n"))


def code(s):
  return ("code", textwrap.dedent(s).strip("\n"))


def build(name: str, title: str, shows: str, cells: list) -> nbformat.NotebookNode:
  nb = v4.new_notebook()
  nb.metadata = {
      "kernelspec": {"display_name": "Python 3", "language": "python",
                     "name": "python3"},
      "language_info": {"name": "python"},
      "colab": {"provenance": [], "toc_visible": True},
  }
  head = (f"# {title}\n\n" + BADGE.format(org=ORG, name=name) + "\n\n"
          + textwrap.dedent(shows).strip())
  all_cells = [md(head), code(INSTALL), code(SETUP)] + cells
  for kind, src in all_cells:
    nb.cells.append(v4.new_markdown_cell(src) if kind == "md" else v4.new_code_cell(src))
  # deterministic cell ids so regenerating gives a clean diff
  for i, c in enumerate(nb.cells):
    c["id"] = f"{os.path.splitext(name)[0][:20]}-{i:02d}".replace("_", "-")
  return nb


NOTEBOOKS = {}


def notebook(name, title, shows):
  def deco(fn):
    NOTEBOOKS[name] = (title, shows, fn)
    return fn
  return deco


# ---------------------------------------------------------------------------
@notebook("01_composing_optimizers.ipynb", "Composing optimizers from primitives",
          """
**What this shows.** Every optzoo optimizer is a short `optax.chain` of small
primitives, so (1) `optzoo.adam` *is* `chain(scale_by_adam, scale_by_learning_rate)`
to the last bit, (2) RMSProp with momentum is `chain(scale_by_rms, trace, ...)`
and differs from Adam only in *where* the momentum sits, and (3) a new optimizer
takes five lines. The figures train the same MLP on real handwritten digits with
each chain.
""")
def nb_composing():
  return [
      md("""
      ## 1. A training loop that takes any chain
      `zn.fit` runs the usual Flax loop (`TrainState`, jitted step, evaluation
      mode at the end of each epoch). Same seed = same initial weights and the
      same minibatches, so curves differ only because the optimizers differ.
      """),
      code("""
      EPOCHS = 2 if FAST else 8
      model = zn.MLP(hidden=(64, 64))
      def run(tx, epochs=EPOCHS):
          return zn.fit(model, tx, data, epochs=epochs, batch_size=64, seed=0)
      """),
      md("""
      ## 2. `adam` = `scale_by_adam` + `scale_by_learning_rate`
      The alias and the hand-written chain give bit-identical parameters.
      """),
      code("""
      lr = 3e-3
      h_alias = run(optzoo.adam(lr))
      h_chain = run(optax.chain(optzoo.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                                optzoo.scale_by_learning_rate(lr)))
      diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
          jax.tree.leaves(h_alias["state"].params), jax.tree.leaves(h_chain["state"].params)))
      print(f"max |params(adam) - params(chain)| after {h_alias['steps']} steps: {diff:.1e}")
      assert diff == 0.0
      """),
      md(r"""
      ## 3. RMSProp + momentum vs Adam: where does the momentum go?
      * **RMSProp with momentum** (`torch.optim.RMSprop(momentum=0.9)`):
        normalise first, then accumulate,
        $b \leftarrow \mu b + g/(\sqrt{v}+\epsilon)$. In optzoo:
        `chain(scale_by_rms(0.99), trace(0.9), scale_by_learning_rate(lr))`.
      * **Adam**: accumulate first, then normalise, with bias correction,
        $\hat m/(\sqrt{\hat v}+\epsilon)$.

      We check the first identity against the `optzoo.rmsprop` alias, then race both.
      """),
      code("""
      lr_rms = 1e-3
      rms_chain = optax.chain(optzoo.scale_by_rms(decay=0.99, eps=1e-8),
                              optzoo.trace(decay=0.9),
                              optzoo.scale_by_learning_rate(lr_rms))
      h_rms_chain = run(rms_chain)
      h_rms_alias = run(optzoo.rmsprop(lr_rms, decay=0.99, eps=1e-8, momentum=0.9))
      d = max(abs(a - b) for a, b in zip(h_rms_chain["train_loss"], h_rms_alias["train_loss"]))
      print(f"rmsprop alias vs chain, max loss difference: {d:.1e}")
      assert d < 1e-6
      """),
      md("""
      ## 4. A new optimizer in five lines
      Signum (sign of the momentum, Bernstein et al. 2018): a custom
      `GradientTransformation` for the sign, chained with optzoo's `trace`.
      And a "production" chain: gradient clipping, Adam, decoupled weight decay,
      a warm-up + cosine schedule.
      """),
      code("""
      def scale_by_sign():
          return optax.GradientTransformation(
              lambda params: optax.EmptyState(),
              lambda updates, state, params=None: (jax.tree.map(jnp.sign, updates), state))
      signum = lambda lr, beta=0.9: optax.chain(optzoo.trace(beta), scale_by_sign(),
                                                optzoo.scale_by_learning_rate(lr))

      total = EPOCHS * (len(data.x_train) // 64)
      schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, total // 10, total)
      production = optax.chain(optax.clip_by_global_norm(1.0), optzoo.scale_by_adam(),
                               optzoo.add_decayed_weights(1e-4),
                               optzoo.scale_by_learning_rate(schedule))
      runs = {"adam (alias)": h_alias, "adam (chain)": h_chain,
              "rmsprop+momentum (chain)": h_rms_chain,
              "signum (5 lines)": run(signum(1e-3)),
              "clip+adam+wd+warmup-cosine": run(production)}
      """),
      code("""
      fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
      k = 10
      for i, (name, h) in enumerate(runs.items()):
          y = np.convolve(h["train_loss"], np.ones(k) / k, mode="valid")
          ax1.plot(y, label=name, lw=2 if i else 4, alpha=1 if i else 0.4)
          ax2.plot(np.arange(1, EPOCHS + 1), np.array(h["test_accuracy"]) * 100, "o-", label=name)
      ax1.set(yscale="log", xlabel="step", ylabel="training loss (moving avg.)",
              title="digits MLP: one loop, five chains")
      ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
      ax1.legend(fontsize=8); ax2.legend(fontsize=8); plt.tight_layout(); plt.show()
      for name, h in runs.items():
          print(f"{name:30s} final train loss {h['epoch_train_loss'][-1]:.4f}  test acc {100*h['test_accuracy'][-1]:.2f}%")
      """),
      md("""
      **Reading the figure.** The two Adam curves lie exactly on top of each other
      (the wide pale line is the alias, the thin one the chain). RMSProp+momentum
      is much faster here although its learning rate is lower: it has no bias
      correction, so with $v$ starting at 0 its first steps are up to
      $1/\\sqrt{1-0.99} = 10\\times$ larger, and the momentum *after* the
      normalization multiplies the steady step by up to $1/(1-0.9)$. Signum and the
      production chain (which starts with a warm-up) are slower over this short run.
      """),
  ]


# ---------------------------------------------------------------------------
@notebook("02_team_sgd_vs_team_adam.ipynb", "Team SGD vs Team Adam on real data",
          """
**What this shows.** On real handwritten digits, Team Adam (adaptive learning
rates) lowers the training loss fastest, while Team SGD (SGD with momentum,
Nesterov) is slower to start; we measure the *generalization gap* (test loss
minus train loss) of each, and try the lecture's advice "begin with Adam, end
with SGDM" both by hand and with SWATS (which switches automatically). This is
what `optzoo race` runs from the command line.
""")
def nb_race():
  return [
      md("""
      ## 1. The race
      A wider MLP on a *small* training set (600 digits) so it can overfit, and
      the generalization gap becomes visible.
      """),
      code("""
      EPOCHS = 4 if FAST else 30
      small = data.subset(n_train=600)
      model = zn.MLP(hidden=(256, 256))
      teams = {
          "sgdm":  optzoo.sgd(0.05, momentum=0.9),
          "nag":   optzoo.nag(0.05, momentum=0.9),
          "adam":  optzoo.adam(3e-3),
          "adamw": optzoo.adamw(3e-3, weight_decay=1e-2),
          "swats": optzoo.swats(3e-3),
      }
      hist = {}
      for name, tx in teams.items():
          t = time.perf_counter()
          hist[name] = zn.fit(model, tx, small, epochs=EPOCHS, batch_size=32, seed=0)
          print(f"{name:6s} {time.perf_counter() - t:5.1f}s  test acc {100 * hist[name]['test_accuracy'][-1]:.2f}%")
      """),
      md("""
      ## 2. "Begin with Adam, end with SGDM" by hand
      Train with Adam for the first third, then keep the weights and continue with
      SGD + momentum (a fresh optimizer state). `TrainState.replace` swaps the
      optimizer without touching the model.
      """),
      code("""
      switch = max(1, EPOCHS // 3)
      h1 = zn.fit(model, optzoo.adam(3e-3), small, epochs=switch, batch_size=32, seed=0)
      sgdm = optzoo.sgd(0.05, momentum=0.9)
      state = h1["state"].replace(tx=sgdm, opt_state=sgdm.init(h1["state"].params))
      h2 = zn.fit(model, sgdm, small, epochs=EPOCHS - switch, batch_size=32, seed=1, state=state)
      hist["adam→sgdm"] = {k: h1[k] + h2[k] for k in
                           ("train_loss", "epoch_train_loss", "test_loss", "test_accuracy")}
      """),
      code("""
      fig, axes = plt.subplots(1, 3, figsize=(15, 4))
      ep = np.arange(1, EPOCHS + 1)
      for name, h in hist.items():
          axes[0].plot(np.convolve(h["train_loss"], np.ones(5) / 5, mode="valid"), label=name)
          gap = np.array(h["test_loss"]) - np.array(h["epoch_train_loss"])
          axes[1].plot(ep, gap, "o-", ms=3, label=name)
          axes[2].plot(ep, 100 * np.array(h["test_accuracy"]), "o-", ms=3, label=name)
      axes[0].set(yscale="log", xlabel="step", ylabel="training loss (minibatch, smoothed)",
                  title="speed: training loss")
      axes[1].set(xlabel="epoch", ylabel="test loss - train loss", title="generalization gap")
      axes[2].set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
      for a in axes: a.grid(alpha=.3); a.legend(fontsize=8)
      plt.tight_layout(); plt.show()
      print(f"{'optimizer':10s} {'train loss':>10s} {'test loss':>10s} {'gap':>8s} {'test acc':>9s}")
      for name, h in hist.items():
          print(f"{name:10s} {h['epoch_train_loss'][-1]:10.4f} {h['test_loss'][-1]:10.4f}"
                f" {h['test_loss'][-1] - h['epoch_train_loss'][-1]:8.4f} {100*h['test_accuracy'][-1]:8.2f}%")
      """),
      code("""
      sw = hist["swats"]["state"].opt_state
      sw = next(s for s in jax.tree.leaves(sw, is_leaf=lambda s: isinstance(s, optzoo.SwatsState))
                if isinstance(s, optzoo.SwatsState))
      print("SWATS switched to SGD:", bool(sw.sgd_phase), "| at step", int(sw.switch_step),
            "| learned SGD lr", float(sw.sgd_lr))
      """),
      md("""
      **Reading the figures.** Left: Adam-type optimizers drive the training loss
      down fastest in the first epochs. Middle: the gap between test and training
      loss grows as the network memorises the 600 training images; compare its size
      at the end across optimizers. Right: test accuracy. The hand-made
      "Adam then SGDM" run keeps Adam's fast start and then continues with SGDM;
      SWATS makes the switch by itself when its projected SGD learning rate settles
      (printed above). On a problem this small the differences are a few tenths of
      a percent: run with `FAST=False` and several seeds before drawing conclusions.

      From a terminal, `optzoo race` runs the same experiment on all of digits and
      writes a table, `race.png` and `results.json`.
      """),
  ]


# ---------------------------------------------------------------------------
@notebook("03_lr_schedules_and_range_test.ipynb",
          "Learning-rate schedules gallery and the LR range test",
          """
**What this shows.** (1) A plot of every schedule in the optzoo registry
(cyclical, SGDR, one-cycle with its momentum schedule, warm-ups, batch-size
scaling, BYOL's tau), (2) Smith's LR range test on real digits: the loss
against an exponentially growing learning rate, with the suggested rate, and
(3) that the suggested range is a good one: a one-cycle run built from it
against constant learning rates.
""")
def nb_schedules():
  return [
      md("""
      ## 1. Every schedule in the zoo
      Schedules are `step -> learning rate` functions (step 0 is the first
      update), usable wherever optax takes a `learning_rate`. The loop below
      draws *every* schedule registered in optzoo, with parameters chosen to make
      the shapes visible.
      """),
      code("""
      T = 600
      nicer = {   # settings that make readable plots
          "cyclical": dict(base_lr=1e-3, max_lr=1e-2, step_size_up=75, mode="triangular2"),
          "sgdr": dict(learning_rate=1e-2, t_0=40, t_mult=2),
          "one_cycle": dict(max_lr=1e-2, total_steps=T),
          "one_cycle_momentum": dict(total_steps=T),
          "linear_warmup": dict(learning_rate=optax.cosine_decay_schedule(1e-2, T), warmup_steps=100),
          "exponential_warmup": dict(learning_rate=1e-2, time_constant=60.0),
          "radam_warmup": dict(learning_rate=1e-2, b2=0.999),
          "scale_for_batch_size": dict(learning_rate=1e-2, base_batch_size=32, batch_size=256),
          "byol_tau_schedule": dict(total_steps=T),
      }
      # optzoo's own schedules; the torch.optim.lr_scheduler ports are in notebook 11.
      infos = [i for i in optzoo.list_optimizers(family="schedule") if i.name in nicer]
      cols = 3
      rows = -(-(len(infos) + 1) // cols)
      fig, axes = plt.subplots(rows, cols, figsize=(13, 2.8 * rows))
      steps = np.arange(T)
      for ax, info in zip(axes.flat, infos):
          sched = info.factory(**nicer[info.name])
          ax.plot(steps, [float(sched(i)) for i in steps])
          ax.set_title(f"optzoo.{info.name}", fontsize=10); ax.grid(alpha=.3)
      for ax in list(axes.flat)[len(infos):]:
          ax.axis("off")
      # two more variants worth seeing side by side
      axes.flat[-1].axis("on")
      for mode, g in (("triangular", 1.0), ("exp_range", 0.997)):
          sch = optzoo.cyclical(1e-3, 1e-2, 75, mode=mode, gamma=g)
          axes.flat[-1].plot(steps, [float(sch(i)) for i in steps], label=mode)
      axes.flat[-1].legend(fontsize=8); axes.flat[-1].set_title("cyclical: other modes", fontsize=10)
      plt.tight_layout(); plt.show()
      print(len(infos), "registered schedules:", ", ".join(i.name for i in infos))
      """),
      md("""
      ## 2. The LR range test (Smith 2017)
      Train for one short run while the learning rate grows exponentially from
      `min_lr` to `max_lr`; the loss first barely moves, then falls, then
      explodes. The suggestion is where the smoothed loss falls fastest.
      """),
      code("""
      import functools
      model = zn.MLP(hidden=(64, 64))
      params = model.init(jax.random.PRNGKey(0), data.x_train[:64])["params"]
      def loss_fn(p, batch):
          x, y = batch
          return jnp.mean(zn.cross_entropy(model.apply({"params": p}, x), y))
      batches = list(zn.batches(data.x_train, data.y_train, 64, seed=0))
      res = optzoo.lr_range_test(loss_fn, params, batches,
                                 optimizer=functools.partial(optzoo.sgd, momentum=0.9),
                                 min_learning_rate=1e-4, max_learning_rate=10.0, num_steps=60 if FAST else 150)
      print(f"suggestion {res.suggestion:.3g}; loss minimum at lr {res.min_loss_lr:.3g};"
            f" diverged: {res.diverged}")
      res.plot(); plt.show()
      """),
      md("""
      ## 3. Using the range: one-cycle vs constant learning rates
      Smith's recipe: the top of the cycle a little below where the loss is
      lowest in the range test, the bottom 25x lower.
      """),
      code("""
      EPOCHS = 3 if FAST else 12
      total = EPOCHS * (len(data.x_train) // 64)
      max_lr = res.min_loss_lr / 3
      runs = {
          f"one_cycle(max_learning_rate={max_lr:.2g})": optzoo.sgd(optzoo.one_cycle(max_lr, total), momentum=0.9),
          f"constant {res.suggestion:.2g} (suggestion)": optzoo.sgd(res.suggestion, momentum=0.9),
          "constant 1e-3 (too small)": optzoo.sgd(1e-3, momentum=0.9),
      }
      hist = {k: zn.fit(model, tx, data, epochs=EPOCHS, batch_size=64, seed=0) for k, tx in runs.items()}
      fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
      for k, h in hist.items():
          a1.plot(np.convolve(h["train_loss"], np.ones(8) / 8, mode="valid"), label=k)
          a2.plot(np.arange(1, EPOCHS + 1), 100 * np.array(h["test_accuracy"]), "o-", label=k)
      a1.set(yscale="log", xlabel="step", ylabel="training loss (smoothed)", title="digits MLP, SGD+momentum")
      a2.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
      a1.legend(fontsize=8); a2.legend(fontsize=8); plt.tight_layout(); plt.show()
      """),
      md("""
      **Reading the figures.** The gallery shows the shapes (triangles shrinking
      by half for `triangular2`, restarts doubling in length for SGDR, the warm-up
      then anneal of one-cycle and its mirrored momentum). The range-test curve is
      flat at tiny learning rates, drops, and blows up past ~1; the learning rate
      picked from it trains far faster than a timid 1e-3.
      """),
  ]


# ---------------------------------------------------------------------------
@notebook("04_warmup_radam_swats_lookahead.ipynb",
          "Warm-up, RAdam, SWATS and Lookahead",
          """
**What this shows.** Early in training Adam's adaptive learning rate
$1/\\sqrt{\\hat v_t}$ is estimated from a handful of gradients, so its variance is
large (Liu et al., 2020). We measure that variance on real digits, compare it with
RAdam's rectification factor $r_t$, and then train at an aggressive learning rate
with plain Adam, Adam + warm-up, RAdam, Lookahead(Adam) and SWATS.
""")
def nb_warmup():
  return [
      md(r"""
      ## 1. The variance of the adaptive learning rate
      At the initial weights we draw many minibatch gradients. For $R$ random
      orders we compute Adam's bias-corrected $\hat v_t$ after $t$ gradients and the
      adaptive rate $\psi_t = 1/(\sqrt{\hat v_t}+\epsilon)$; the variance of
      $\psi_t$ across orders (median over parameters, relative to its mean) is the
      quantity RAdam corrects for.
      """),
      code("""
      model = zn.MLP(hidden=(64, 64))
      params = model.init(jax.random.PRNGKey(0), data.x_train[:32])["params"]
      def loss_fn(p, x, y):
          return jnp.mean(zn.cross_entropy(model.apply({"params": p}, x), y))
      NB = 120 if FAST else 400
      xb = np.stack([x for e in range(20) for x, _ in zn.batches(data.x_train, data.y_train, 32, seed=1, epoch=e)][:NB])
      yb = np.stack([y for e in range(20) for _, y in zn.batches(data.x_train, data.y_train, 32, seed=1, epoch=e)][:NB])
      g = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))(params, xb, yb)
      G = np.concatenate([np.asarray(l).reshape(NB, -1) for l in jax.tree.leaves(g)], 1)  # (NB, P)
      b2, eps, R, T = 0.999, 1e-8, 16, NB // 2
      rng = np.random.default_rng(0)
      psi = np.empty((R, T, G.shape[1]), np.float32)
      for r in range(R):
          v = np.zeros(G.shape[1])
          for t, i in enumerate(rng.choice(NB, T, replace=True), start=1):
              v = b2 * v + (1 - b2) * G[i] ** 2
              psi[r, t - 1] = 1 / (np.sqrt(v / (1 - b2 ** t)) + eps)
      rel_var = np.median(psi.var(0) / psi.mean(0) ** 2, axis=1)
      t = np.arange(1, T + 1)
      rho_inf = 2 / (1 - b2) - 1
      rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
      r_t = np.where(rho > 5, np.sqrt(np.clip((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho), 0, None)), 0)
      fig, ax = plt.subplots(figsize=(7, 4))
      ax.loglog(t, rel_var, label=r"Var$[\\psi_t]$ / E$[\\psi_t]^2$ (digits MLP)")
      ax.loglog(t[r_t > 0], r_t[r_t > 0], label="RAdam rectification $r_t$")
      ax.axvspan(1, t[r_t > 0][0], color="0.85", label="$r_t$ undefined: RAdam takes SGD-momentum steps")
      ax.set(xlabel="step t", title="adaptive LR: large variance early, RAdam damps it")
      ax.legend(); ax.grid(alpha=.3, which="both"); plt.show()
      print(f"relative variance at t=2: {rel_var[1]:.3f}, at t={T}: {rel_var[-1]:.4f}")
      """),
      md("""
      ## 2. Training at an aggressive learning rate
      Same network, same data order, learning rate 3e-2 (ten times the race's
      default). Adam without warm-up takes large, noisy first steps; a linear
      warm-up, RAdam's rectification, Lookahead's slow weights and SWATS are four
      answers.
      """),
      code("""
      EPOCHS = 3 if FAST else 10
      SEEDS = [0] if FAST else [0, 1, 2]
      LR = 3e-2
      spe = len(data.x_train) // 64
      cands = {
          "adam": lambda: optzoo.adam(LR),
          "adam + linear warm-up": lambda: optzoo.adam(optzoo.linear_warmup(LR, warmup_steps=2 * spe, start_factor=0.01)),
          "radam": lambda: optzoo.radam(LR),
          "lookahead(adam)": lambda: optzoo.lookahead(optzoo.adam(LR), sync_period=5, slow_step_size=0.5),
          "swats": lambda: optzoo.swats(LR),
      }
      hist = {k: [zn.fit(model, make(), data, epochs=EPOCHS, batch_size=64, seed=s) for s in SEEDS]
              for k, make in cands.items()}
      fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
      for k, hs in hist.items():
          L = np.mean([h["train_loss"] for h in hs], 0)
          a1.plot(np.convolve(L, np.ones(5) / 5, mode="valid"), label=k)
          acc = np.mean([h["test_accuracy"] for h in hs], 0) * 100
          a2.plot(np.arange(1, EPOCHS + 1), acc, "o-", label=k)
      a1.set(yscale="log", xlabel="step", ylabel="training loss (smoothed)", title=f"lr={LR}: the first hundred steps matter")
      a2.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"mean over {len(SEEDS)} seed(s)")
      a1.legend(fontsize=8); a2.legend(fontsize=8); plt.tight_layout(); plt.show()
      """),
      md("""
      ## 3. What the wrappers keep in their state
      Lookahead evaluates best with its *slow* weights (`optzoo.lookahead_slow_params`);
      SWATS records when it switched to SGD and the learning rate it learned.
      """),
      code("""
      h = hist["lookahead(adam)"][0]
      slow = optzoo.lookahead_slow_params(h["state"].opt_state)
      ev_fast = zn.eval_step(h["state"], data.x_test, data.y_test)
      ev_slow = zn.eval_step(h["state"].replace(params=slow), data.x_test, data.y_test)
      print(f"lookahead test acc: fast weights {100*float(ev_fast['accuracy']):.2f}%,"
            f" slow weights {100*float(ev_slow['accuracy']):.2f}%")
      sw = [s for s in jax.tree.leaves(hist["swats"][0]["state"].opt_state,
                                       is_leaf=lambda s: isinstance(s, optzoo.SwatsState))
            if isinstance(s, optzoo.SwatsState)][0]
      print("SWATS in SGD phase:", bool(sw.sgd_phase), "since step", int(sw.switch_step),
            "with learned lr", float(sw.sgd_lr))
      """),
      md("""
      **Reading the figures.** The first plot shows the relative variance of the
      adaptive learning rate falling by orders of magnitude over the first
      hundreds of steps, while RAdam's $r_t$ is zero for the first steps and
      grows only as the variance shrinks: rectification is an automatic warm-up.
      The second plot shows the price and the purpose: on this small MLP plain Adam
      happens to survive lr 3e-2, so the warm-up and RAdam (whose rectification
      acts like a warm-up over roughly $2/(1-\\beta_2)$ steps) start slower;
      they earn their keep where Adam's first steps blow up (deeper nets,
      transformers, larger learning rates: try `LR = 0.1`). Lookahead and SWATS
      follow Adam early; SWATS switches to SGD once its learning-rate estimate
      settles (printed above, if it happened within this run).
      """),
  ]


# ---------------------------------------------------------------------------
@notebook("05_normalization_in_flax.ipynb", "Normalization in Flax",
          """
**What this shows.** (1) Feature normalization reshapes the error surface:
on the real *wine* data, raw features give long thin loss valleys (huge
condition number, gradient descent crawls), standardized features give round
ones. (2) BatchNorm uses batch statistics in training and moving averages in
evaluation, with a Flax `TrainState` that carries `batch_stats`. (3) BatchNorm,
LayerNorm, GroupNorm, InstanceNorm and WeightNorm change how fast the same CNN
trains on digits.
""")
def nb_norm():
  return [
      md("""
      ## 1. Feature normalization and the error surface
      Least squares on two wine features (alcohol, around 13, and proline,
      around 750): the Hessian is $2X^TX/n$; its condition number decides how
      slowly gradient descent converges at the largest stable step $1/\\lambda_{max}$.
      """),
      code("""
      from sklearn.datasets import load_wine
      wine = load_wine()
      X_raw = wine.data[:, [0, 12]]            # alcohol, proline
      y = np.where(wine.target == 0, 1.0, -1.0)
      X_std = (X_raw - X_raw.mean(0)) / X_raw.std(0)
      def setup(X):
          H = 2 * X.T @ X / len(X)
          w_star = np.linalg.solve(X.T @ X, X.T @ y)
          return H, w_star
      def gd(X, steps=50):
          H, _ = setup(X)
          lr = 1.0 / np.linalg.eigvalsh(H).max()
          w = np.zeros(2); path = [w]
          for _ in range(steps):
              w = w - lr * (2 * X.T @ (X @ w - y) / len(X)); path.append(w)
          return np.array(path)
      fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
      for ax, X, name in ((axes[0], X_raw, "raw features"), (axes[1], X_std, "standardized")):
          H, w_star = setup(X)
          ev = np.linalg.eigvalsh(H)
          path = gd(X)
          span = np.abs(w_star).max() * 1.6 + 1e-3
          a = np.linspace(w_star[0] - span, w_star[0] + span, 200)
          b = np.linspace(w_star[1] - span, w_star[1] + span, 200) if name != "raw features" else np.linspace(w_star[1] - 3 * abs(w_star[1]), w_star[1] + 3 * abs(w_star[1]), 200)
          A, B = np.meshgrid(a, b)
          W = np.stack([A.ravel(), B.ravel()], 1)
          L = np.mean((W @ X.T - y) ** 2, 1).reshape(A.shape)
          ax.contour(A, B, np.log(L - L.min() + 1e-3), 25, cmap="viridis")
          ax.plot(path[:, 0], path[:, 1], "r.-", ms=3, label="50 GD steps at lr=1/λmax")
          ax.plot(*w_star, "k*", ms=12, label="optimum")
          ax.set(title=f"{name}: condition number {ev.max() / ev.min():.0f}", xlabel="w_alcohol", ylabel="w_proline")
          ax.legend(fontsize=8)
          print(f"{name:13s} condition number {ev.max()/ev.min():10.1f}, distance to optimum after 50 steps {np.linalg.norm(path[-1]-w_star)/np.linalg.norm(w_star):.3f} (relative)")
      plt.tight_layout(); plt.show()
      """),
      md("""
      ## 2. BatchNorm: batch statistics in training, moving averages in evaluation
      `zn.MLP(norm="batch")` with `zn.TrainState` (which carries `batch_stats`).
      `zn.train_step` runs the model with `train=True, mutable=["batch_stats"]`
      and stores the updated moving averages
      $r \\leftarrow m\\,r + (1-m)\\,\\mu_B$; `zn.eval_step` uses them. We follow the
      moving mean of three units against the true mean over the training set.
      """),
      code("""
      bn_model = zn.MLP(hidden=(32,), norm="batch", bn_momentum=0.9)
      state = zn.create_train_state(bn_model, optzoo.adam(3e-3), data.x_train[:64], seed=0)
      EPOCHS_BN = 2 if FAST else 6
      track, pop = [], []
      for e in range(EPOCHS_BN):
          for x, yb in zn.batches(data.x_train, data.y_train, 64, seed=0, epoch=e):
              state, _ = zn.train_step(state, x, yb)
              track.append(np.asarray(state.batch_stats["BatchNorm_0"]["mean"][:3]))
              h = data.x_train.reshape(len(data.x_train), -1) @ np.asarray(state.params["Dense_0"]["kernel"])
              pop.append(h.mean(0)[:3])
      track, pop = np.array(track), np.array(pop)
      fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
      for j in range(3):
          l, = a1.plot(track[:, j], label=f"unit {j}: moving average")
          a1.plot(pop[:, j], "--", color=l.get_color(), label=f"unit {j}: training-set mean")
      a1.set(xlabel="step", ylabel="pre-BN activation mean", title="BatchNorm moving mean (momentum 0.9)")
      a1.legend(fontsize=7)
      # evaluation: moving averages vs statistics of the test batch itself
      sizes = [1, 2, 4, 8, 32, 128]
      @jax.jit
      def train_mode_logits(state, xs):   # xs: (groups, batch, ...) -> BN uses each group's statistics
          f = lambda x: state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                       x, train=True, mutable=["batch_stats"])[0]
          return jax.vmap(f)(xs)
      accs = []
      for bs in sizes:
          n = len(data.x_test) // bs * bs
          logits = train_mode_logits(state, data.x_test[:n].reshape(n // bs, bs, 8, 8, 1))
          accs.append(100 * float(np.mean(np.argmax(logits, -1).reshape(-1) == data.y_test[:n])))
      ev = zn.eval_step(state, data.x_test, data.y_test)
      a2.semilogx(sizes, accs, "o-", label="train mode: statistics of the test batch")
      a2.axhline(100 * float(ev["accuracy"]), color="C3", ls="--", label="eval mode: moving averages")
      a2.set(xlabel="test batch size", ylabel="test accuracy (%)", title="why evaluation needs the moving averages")
      a2.legend(fontsize=8); plt.tight_layout(); plt.show()
      """),
      md("""
      ## 3. Which normalization trains fastest?
      The same small CNN, six `norm=` settings, one optimizer and learning rate.
      """),
      code("""
      EPOCHS = 2 if FAST else 8
      train_set = data.subset(n_train=640) if FAST else data
      hist = {}
      for norm in zn.NORMS:
          cnn = zn.CNN(channels=(8, 16) if FAST else (16, 32), norm=norm)
          hist[norm] = zn.fit(cnn, optzoo.sgd(0.05, momentum=0.9), train_set, epochs=EPOCHS, batch_size=64, seed=0)
      fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
      for norm, h in hist.items():
          a1.plot(np.convolve(h["train_loss"], np.ones(8) / 8, mode="valid"), label=norm)
          a2.plot(np.arange(1, EPOCHS + 1), 100 * np.array(h["test_accuracy"]), "o-", label=norm)
      a1.set(yscale="log", xlabel="step", ylabel="training loss (smoothed)", title="digits CNN, SGD+momentum 0.05")
      a2.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy (eval mode)")
      a1.legend(title="norm", fontsize=8); a2.legend(title="norm", fontsize=8); plt.tight_layout(); plt.show()
      for norm, h in hist.items():
          print(f"{norm:9s} final train loss {h['epoch_train_loss'][-1]:.4f}  test acc {100*h['test_accuracy'][-1]:.2f}%")
      """),
      md("""
      ### The same with Flax NNX
      `nnx.Optimizer(model, tx, wrt=nnx.Param)` trains only parameters; BatchNorm's
      `nnx.BatchStat` moving averages are updated by the forward pass.
      """),
      code("""
      from flax import nnx
      m = zn.NNXMLP(64, hidden=(64,), norm="batch", rngs=nnx.Rngs(0))
      opt = zn.nnx_optimizer(m, optzoo.adam(3e-3))
      for e in range(2):
          for x, yb in zn.batches(data.x_train, data.y_train, 64, seed=0, epoch=e):
              loss = zn.nnx_train_step(m, opt, x, yb)
      print("NNX BatchNorm MLP:", zn.nnx_eval(m, data.x_test, data.y_test))
      """),
      md("""
      **Reading the figures.** Wine: with raw features the loss valley is a thin
      sliver and 50 gradient steps barely move along it; after standardization the
      contours are nearly round and the same 50 steps reach the optimum. BatchNorm:
      the moving averages lag and then track the training-set means; in training
      mode tiny test batches destroy accuracy (the statistics of one example are
      meaningless), while the moving averages give batch-independent predictions.
      Norm race: compare how quickly each normalized CNN drops its loss against
      `none`.
      """),
  ]


# ---------------------------------------------------------------------------
@notebook("06_critical_points_and_hessian.ipynb", "Critical points and the Hessian",
          """
**What this shows.** (1) The second-order test on a function we can draw:
saddle vs minimum, with `optzoo.diagnostics.classify_critical_point`.
(2) On a real digits network: training starts on a plateau near a saddle
(tiny gradient, but *not* a minimum: the minimum ratio, the fraction of
positive Hessian eigenvalues, is far below 1), and ends where the loss barely
moves although the minibatch gradient is not small. Training stuck ≠ small
gradient, and small gradient ≠ minimum.
""")
def nb_hessian():
  return [
      code("""
      import optzoo.diagnostics as dg
      f = lambda p: p[0] ** 2 + (p[1] ** 2 - 1) ** 2        # minima at (0, ±1), saddle at (0, 0)
      pts = {"(0, 0)": jnp.array([0.0, 0.0]), "(0, 1)": jnp.array([0.0, 1.0]), "(0, -1)": jnp.array([0.0, -1.0])}
      fig, ax = plt.subplots(figsize=(6, 5))
      A, B = np.meshgrid(np.linspace(-1.5, 1.5, 200), np.linspace(-1.8, 1.8, 200))
      ax.contour(A, B, A ** 2 + (B ** 2 - 1) ** 2, 30, cmap="viridis")
      for name, p in pts.items():
          cp = dg.classify_critical_point(f, p)
          print(f"{name:8s} -> {cp.label:8s} eigenvalues {np.round(np.asarray(cp.eigenvalues), 3)}  minimum ratio {cp.minimum_ratio:.2f}")
          ax.plot(*np.asarray(p), "r*" if cp.label == "saddle" else "k*", ms=14)
          ax.annotate(cp.label, np.asarray(p) + 0.08)
          if cp.escape_direction is not None and cp.label == "saddle":
              d = np.asarray(cp.escape_direction)
              ax.arrow(0, 0, 0.6 * d[0], 0.6 * d[1], width=0.02, color="r")
      ax.set(title="f(x, y) = x² + (y² − 1)²: the Hessian decides", xlabel="x", ylabel="y"); plt.show()
      """),
      md("""
      ## On real data: a small network on digits
      64 → 12 → 10 (≈900 parameters, so the exact Hessian is cheap). Initialised
      with very small weights, the network sits near the saddle at zero: the
      loss is stuck at log 10 with a tiny gradient. We record the full-batch loss,
      full-batch and minibatch gradient norms, and at checkpoints the minimum ratio.
      """),
      code("""
      import flax.linen as fnn
      class Tiny(fnn.Module):
          @fnn.compact
          def __call__(self, x):
              init = fnn.initializers.normal(1e-3)
              x = fnn.tanh(fnn.Dense(12, kernel_init=init)(x.reshape(len(x), -1)))
              return fnn.Dense(10, kernel_init=init)(x)
      tiny = Tiny()
      sub = data.subset(n_train=512)
      X, Y = jnp.asarray(sub.x_train), jnp.asarray(sub.y_train)
      params = tiny.init(jax.random.PRNGKey(0), X[:2])["params"]
      def loss_fn(p, batch=None):
          x, y = (X, Y) if batch is None else batch
          return jnp.mean(zn.cross_entropy(tiny.apply({"params": p}, x), y))
      tx = optzoo.sgd(0.5, momentum=0.9)
      opt_state = tx.init(params)
      @jax.jit
      def step(p, s, x, y):
          l, g = jax.value_and_grad(loss_fn)(p, (x, y))
          u, s = tx.update(g, s, p)
          p = optax.apply_updates(p, u)
          full_l, full_g = jax.value_and_grad(loss_fn)(p)    # full-batch loss and gradient, same call
          return p, s, optax.tree.norm(g), full_l, optax.tree.norm(full_g)
      full_grad = jax.jit(lambda p: optax.tree.norm(jax.grad(loss_fn)(p)))
      full_loss = jax.jit(loss_fn)
      EPOCHS = 8 if FAST else 40
      CHECK = 3 if FAST else 8
      log = {"step": [], "loss": [], "g_full": [], "g_mini": []}
      cp0 = dg.classify_critical_point(loss_fn, params)
      checks = [(0, cp0.minimum_ratio, float(cp0.min_eigenvalue), float(cp0.max_eigenvalue))]
      print(f"init    : loss {float(full_loss(params)):.3f}  |grad| {float(full_grad(params)):.2e}  minimum ratio"
            f" {cp0.minimum_ratio:.2f}  eig range [{cp0.min_eigenvalue:.2e}, {cp0.max_eigenvalue:.2e}]  -> {cp0.label}")
      it = 0
      for e in range(EPOCHS):
          rows = []
          for x, y in zn.batches(sub.x_train, sub.y_train, 32, seed=0, epoch=e):
              params, opt_state, gmini, fl, fg = step(params, opt_state, x, y)
              rows.append((gmini, fl, fg))
          for gmini, fl, fg in jax.device_get(rows):
              it += 1
              log["step"].append(it); log["loss"].append(float(fl))
              log["g_full"].append(float(fg)); log["g_mini"].append(float(gmini))
          if e in np.linspace(0, EPOCHS - 1, CHECK).astype(int):
              cp = dg.classify_critical_point(loss_fn, params)
              checks.append((it, cp.minimum_ratio, float(cp.min_eigenvalue), float(cp.max_eigenvalue)))
              print(f"step {it:4d}: loss {log['loss'][-1]:.3f}  |grad| {log['g_full'][-1]:.2e}  "
                    f"minimum ratio {cp.minimum_ratio:.2f}  eig range [{cp.min_eigenvalue:.2e}, {cp.max_eigenvalue:.2e}]  -> {cp.label}")
      """),
      code("""
      fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4))
      a1.plot(log["step"], log["loss"], label="full-batch loss")
      a1b = a1.twinx()
      a1b.semilogy(log["step"], log["g_mini"], color="C2", alpha=.4, label="minibatch |grad|")
      a1b.semilogy(log["step"], log["g_full"], color="C1", label="full-batch |grad|")
      a1.set(xlabel="step", ylabel="loss", title="plateau at the saddle, then descent")
      a1.legend(loc="upper center", fontsize=8); a1b.legend(loc="upper right", fontsize=8)
      c = np.array(checks)
      a2.plot(c[:, 0], c[:, 1], "o-")
      a2.set(xlabel="step", ylabel="minimum ratio (fraction of λ > 0)", ylim=(0, 1.05),
             title="how close to a true minimum?")
      a2.grid(alpha=.3); plt.tight_layout(); plt.show()
      """),
      md("""
      **Reading the figures.** The contour plot marks the saddle (red, with its
      escape direction along the negative-curvature eigenvector) and the two
      minima. On digits the first steps are a plateau: the gradient is tiny but the
      minimum ratio is well below one, so the point is a saddle region, not a
      solution. Later the full-batch gradient stays far from zero while the loss
      changes slowly (the minibatch gradient, noisier, is larger still): a flat loss
      curve is not evidence of a critical point. The minimum ratio stays well below
      one all along: even where the loss curve looks converged, SGD is moving
      through a region with many directions of negative curvature, not sitting in a
      minimum.
      """),
  ]


# ---------------------------------------------------------------------------
@notebook("07_batch_size.ipynb", "Batch size: small vs large, sharp vs flat minima",
          """
**What this shows.** Training the same network on digits with small and large
batches (same number of epochs, learning rate scaled with the square-root rule),
then measuring where each lands: large batches take fewer steps, end at a
*sharper* minimum (larger top Hessian eigenvalue, larger loss increase under
perturbation, Keskar et al. 2017) and usually generalize a little worse. The
1-D plots show the loss along random directions around each solution.
""")
def nb_batch():
  return [
      code("""
      import optzoo.diagnostics as dg
      model = zn.MLP(hidden=(64,))
      sub = data.subset(n_train=512 if FAST else 1438)
      variables = model.init(jax.random.PRNGKey(0), sub.x_train[:2])
      sizes = (16, 256) if FAST else (16, 64, 256, 512)
      report = dg.batch_size_experiment(
          model, variables, (sub.x_train, sub.y_train), (sub.x_test, sub.y_test),
          batch_sizes=sizes, base_learning_rate=0.05, rule="sqrt",
          num_epochs=3 if FAST else 20, sharpness_examples=256, keep_params=True, seed=0)
      print(report.table())
      report.plot(); plt.show()
      """),
      md("""
      ## Sharp vs flat, in one dimension
      Loss along a random direction $d$ scaled per layer to the size of the
      weights (filter normalization, Li et al. 2018): $L(\\theta + \\alpha d)$.
      """),
      code("""
      X, Y = jnp.asarray(sub.x_train), jnp.asarray(sub.y_train)
      def loss_at(v):
          return jnp.mean(zn.cross_entropy(model.apply(v, X), Y))
      alphas = np.linspace(-1, 1, 41)
      fig, ax = plt.subplots(figsize=(7, 4))
      for run in report.runs:
          p = run.params
          curves = []
          for k in range(3):
              keys = jax.random.split(jax.random.PRNGKey(k), len(jax.tree.leaves(p)))
              d = jax.tree.unflatten(jax.tree.structure(p), [
                  jax.random.normal(kk, l.shape) * jnp.linalg.norm(l) / jnp.sqrt(l.size)
                  for kk, l in zip(keys, jax.tree.leaves(p))])
              curves.append([float(loss_at(jax.tree.map(lambda a, b: a + t * b, p, d))) for t in alphas])
          ax.plot(alphas, np.mean(curves, 0), label=f"batch {run.batch_size} (λmax {run.top_eigenvalue:.1f})")
      ax.set(yscale="log", xlabel="α (step along a filter-normalized random direction)",
             ylabel="training loss", title="loss profile around each solution")
      ax.legend(); ax.grid(alpha=.3); plt.show()
      """),
      md("""
      **Reading the figures.** The report's plot gives train/validation accuracy
      and the top Hessian eigenvalue against batch size; the 1-D plot the loss
      around each solution. With `FAST=False` (all digits, batch 16/64/256/512,
      20 epochs) we measured: validation accuracy 96.7/96.9/95.3/91.9 %,
      λmax 3.37/3.92/4.09/4.11 and worst-case loss increase at ρ=0.05
      0.009/0.010/0.011/0.018: larger batches take far fewer steps and land at
      sharper points that generalize worse. In the CI setting (`FAST=True`, 3
      epochs, 6 steps for batch 256) the large-batch run has barely left its
      initialization, so its profile is high and flat: it has not reached a
      minimum at all.
      """),
  ]


# ---------------------------------------------------------------------------
@notebook("08_loss_functions.ipynb", "Loss functions: MSE vs cross-entropy",
          """
**What this shows.** For classification, the squared error on softmax (or
sigmoid) outputs has a *flat* error surface far from the solution (the output
saturates and the gradient vanishes), while cross-entropy stays steep there.
We draw both surfaces for a one-feature logistic model of real digits (0 vs 1)
and then train the same MLP with each loss.
""")
def nb_losses():
  return [
      code("""
      mask = (data.y_train == 0) | (data.y_train == 1)
      xf = data.x_train[mask].reshape(mask.sum(), -1)
      yb = (data.y_train[mask] == 1).astype(np.float64)
      # one real feature: projection on the difference of class means, standardized
      d = xf[yb == 1].mean(0) - xf[yb == 0].mean(0)
      z = xf @ d; z = (z - z.mean()) / z.std()
      W, B = np.meshgrid(np.linspace(-8, 8, 161), np.linspace(-8, 8, 161))
      logits = W[..., None] * z + B[..., None]
      p = 1 / (1 + np.exp(-logits))
      mse = np.mean((p - yb) ** 2, -1)
      ce = np.mean(np.logaddexp(0, logits) - yb * logits, -1)
      fig = plt.figure(figsize=(13, 4.5))
      for i, (L, name) in enumerate(((mse, "MSE on sigmoid"), (ce, "cross-entropy"))):
          ax = fig.add_subplot(1, 3, i + 1, projection="3d")
          ax.plot_surface(W, B, L, cmap="viridis", lw=0, rstride=4, cstride=4)
          ax.set(title=name, xlabel="w", ylabel="b")
      ax = fig.add_subplot(1, 3, 3)
      b0 = 80  # slice at b = 0
      gm = np.gradient(mse[b0], W[0]); gc = np.gradient(ce[b0], W[0])
      ax.semilogy(W[0], np.abs(gm) + 1e-12, label="|dMSE/dw|")
      ax.semilogy(W[0], np.abs(gc) + 1e-12, label="|dCE/dw|")
      ax.set(xlabel="w (b = 0)", title="gradient size along a slice"); ax.legend()
      plt.tight_layout(); plt.show()
      print(f"at w=-8 (confidently wrong): |dMSE/dw|={abs(gm[0]):.2e}, |dCE/dw|={abs(gc[0]):.2e}")
      """),
      md("""
      ## The same MLP, two losses
      `zn.fit(..., loss_fn=zn.squared_error)` trains on the squared error between
      softmax probabilities and one-hot labels; the default is cross-entropy.
      """),
      code("""
      EPOCHS = 3 if FAST else 15
      model = zn.MLP(hidden=(64, 64))
      hist = {
          "cross-entropy": zn.fit(model, optzoo.sgd(0.1, momentum=0.9), data, epochs=EPOCHS, seed=0),
          "MSE (softmax vs one-hot)": zn.fit(model, optzoo.sgd(0.1, momentum=0.9), data, epochs=EPOCHS,
                                             seed=0, loss_fn=zn.squared_error),
      }
      fig, ax = plt.subplots(figsize=(7, 4))
      for k, h in hist.items():
          ax.plot(np.arange(1, EPOCHS + 1), 100 * np.array(h["test_accuracy"]), "o-", label=k)
      ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="digits MLP, SGD+momentum 0.1")
      ax.legend(); ax.grid(alpha=.3); plt.show()
      """),
      md("""
      **Reading the figures.** The MSE surface is a plateau over most of the
      $(w, b)$ plane, where the sigmoid saturates; cross-entropy grows linearly
      there and its gradient never vanishes on confidently wrong predictions
      (right panel, log scale). Training the MLP with cross-entropy reaches high
      accuracy in fewer epochs than with the squared error.
      """),
  ]

# ---------------------------------------------------------------------------
@notebook("09_research_methods.ipynb", "The research methods, one runnable example each",
          """
**What this shows.** Every research method in optzoo running on real digits:
KOALA (Kalman filtering with the loss as measurement), NSGD (input-normalized
SGD), WRS (weight rescaling), SGD on the sphere with a fixed effective learning
rate, Entropy-SGD, Replicated-SGD, GradInit, Mini-Block Fisher, Sparse
Connectivity Learning, SVI pseudo-gradients, GradMax growth, Generic Adam,
gradient noise and a parameter EMA. Methods that need extra inputs get them with
no glue where possible (`zn.train_step` passes `value`, `value_sq`, `grad_fn`
and `key`); the others show the few lines they need. The final figure compares
test accuracy after the same number of epochs; it is a smoke test at small
scale, not a benchmark.
""")
def nb_research():
  return [
      code("""
      import flax.linen as fnn
      EPOCHS = 2 if FAST else 10
      sub = data.subset(n_train=640) if FAST else data
      key = jax.random.PRNGKey(0)
      mlp = zn.MLP(hidden=(64, 64))
      params0 = mlp.init(key, sub.x_train[:1])["params"]
      results = {}
      def report(name, acc, curve=None):
          results[name] = (float(acc), curve)
          print(f"{name:32s} test accuracy {100 * float(acc):6.2f}%")
      def fit(name, tx, model=mlp, **kw):
          h = zn.fit(model, tx, sub, epochs=EPOCHS, batch_size=64, seed=0, **kw)
          report(name, h["test_accuracy"][-1], h["train_loss"])
          return h
      def accuracy(model, params, **kw):
          logits = model.apply({"params": params}, sub.x_test, **kw)
          return jnp.mean(jnp.argmax(logits, -1) == sub.y_test)
      def run_steps(step, p, s):
          # EPOCHS of minibatches through a custom step(p, s, x, y) -> (p, s, loss)
          curve = []
          for e in range(EPOCHS):
              for x, y in zn.batches(sub.x_train, sub.y_train, 64, seed=0, epoch=e):
                  p, s, l = step(p, s, x, y); curve.append(float(l))
          return p, curve
      def loss_fn(p, batch, model=mlp):
          x, y = batch
          return jnp.mean(zn.cross_entropy(model.apply({"params": p}, x), y))
      fit("SGD + momentum (baseline)", optzoo.sgd(0.05, momentum=0.9));
      """),
      md("""
      ### KOALA (Davtyan et al., AAAI 2022)
      Needs the minibatch loss `value` and the mean squared per-example loss
      `value_sq` at every update; `zn.train_step` passes both.
      """),
      code("""
      fit("KOALA-V", optzoo.koala(learning_rate=1.0))
      fit("KOALA-M", optzoo.koala(learning_rate=1.0, variant="momentum"));
      """),
      md("""
      ### NSGD (Atici et al.): input-normalized SGD
      `optzoo.collect_input_power` runs the Flax model and returns the input power
      of every Dense/Conv layer, aligned with the parameters.
      """),
      code("""
      tx = optzoo.nsgd(0.1)
      @jax.jit
      def nsgd_step(p, s, x, y):
          def objective(p):
              logits, power = optzoo.collect_input_power(mlp, {"params": p}, x)
              return jnp.mean(zn.cross_entropy(logits, y)), power
          (l, power), g = jax.value_and_grad(objective, has_aux=True)(p)
          u, s = tx.update(g, s, p, input_power=power)
          return optax.apply_updates(p, u), s, l
      p, curve = run_steps(nsgd_step, params0, tx.init(params0))
      report("NSGD", accuracy(mlp, p), curve)
      """),
      md("""
      ### Scale-invariant networks: WRS and SGD on the sphere
      With BatchNorm after each hidden Dense layer, those kernels are
      scale-invariant. WRS rescales them to unit norm after every step; `sphere_sgd`
      trains them on a sphere with a fixed *effective* learning rate. The output
      layer (`Dense_2`) is not scale-invariant and is excluded by the mask.
      """),
      code("""
      bn_mlp = zn.MLP(hidden=(64, 64), norm="batch")
      si_mask = lambda p: jax.tree_util.tree_map_with_path(
          lambda path, x: x.ndim >= 2 and path[0].key != "Dense_2", p)
      fit("WRS (sgd + weight_rescaling)", optax.chain(optzoo.sgd(0.05, momentum=0.9),
                                                      optzoo.weight_rescaling(mask=si_mask)), model=bn_mlp)
      fit("sphere SGD (fixed ELR)", optzoo.sphere_sgd(learning_rate=0.05, mask=si_mask, noninv_learning_rate=0.05),
          model=bn_mlp);
      """),
      md("""
      ### Entropy-SGD and Replicated-SGD (flat-minima methods)
      Entropy-SGD runs a short Langevin loop per update through the extra argument
      `grad_fn(params, i)` (here `zn.train_step` supplies the current batch's
      gradient). Replicated-SGD trains `R` coupled replicas, each on its own
      minibatch, held along a leading axis of every parameter.
      """),
      code("""
      fit("Entropy-SGD", optzoo.entropy_sgd(learning_rate=0.1, num_inner_steps=3 if FAST else 10))
      R = 3
      rep = optzoo.replicate_params(params0, R, key=jax.random.PRNGKey(1), noise=0.01)
      tx = optzoo.replicated_sgd(0.05, gamma=0.01, momentum=0.9)
      @jax.jit
      def rep_step(rep, s, xs, ys):
          l, g = jax.vmap(jax.value_and_grad(lambda p, x, y: loss_fn(p, (x, y))))(rep, xs, ys)
          u, s = tx.update(g, s, rep)
          return optax.apply_updates(rep, u), s, jnp.mean(l)
      s, curve = tx.init(rep), []
      for e in range(EPOCHS):
          bl = list(zn.batches(sub.x_train, sub.y_train, 64, seed=0, epoch=e))
          for i in range(0, len(bl) - R + 1, R):
              xs = np.stack([b[0] for b in bl[i:i + R]]); ys = np.stack([b[1] for b in bl[i:i + R]])
              rep, s, l = rep_step(rep, s, xs, ys); curve.append(float(l))
      centre = jax.tree.map(lambda a: a.mean(0), rep)
      spread = float(optax.tree.norm(jax.tree.map(lambda a: a - a.mean(0), rep)))
      report("Replicated-SGD (centre)", accuracy(mlp, centre), curve)
      print(f"   replica spread ||w^a - mean|| = {spread:.3f}")
      """),
      md("""
      ### GradInit: learn the initial scale of every tensor, then train
      """),
      code("""
      gb = list(zn.batches(sub.x_train, sub.y_train, 32, seed=3))
      gi = optzoo.gradinit(loss_fn, params0, gb, target="sgd", num_iters=15 if FAST else 100,
                           learning_rate=1e-2)
      print("learned scales:", {"/".join(str(getattr(k, "key", k)) for k in path): round(float(v), 3)
                                for path, v in jax.tree_util.tree_leaves_with_path(gi.scales)})
      tx = optzoo.sgd(0.05, momentum=0.9)
      state = zn.create_train_state(mlp, tx, sub.x_train[:1]).replace(params=gi.params)
      fit("GradInit + SGD", tx, state=state);
      """),
      md("""
      ### Mini-Block Fisher: preconditioning from per-example gradients
      """),
      code("""
      # a 32-unit MLP: the Fisher blocks of a 64x64 kernel are slow to invert on CPU
      mbf_mlp = zn.MLP(hidden=(32,))
      mbf_params = mbf_mlp.init(key, sub.x_train[:1])["params"]
      tx = optzoo.mini_block_fisher(1e-2)
      def example_loss(p, ex):
          return zn.cross_entropy(mbf_mlp.apply({"params": p}, ex["x"][None]), ex["y"][None])[0]
      @jax.jit
      def mbf_step(p, s, x, y):
          peg = optzoo.per_example_grads(example_loss, p, {"x": x, "y": y})
          g = jax.tree.map(lambda a: a.mean(0), peg)
          u, s = tx.update(g, s, p, per_example_grads=peg)
          return optax.apply_updates(p, u), s, loss_fn(p, (x, y), model=mbf_mlp)
      p, curve = run_steps(mbf_step, mbf_params, tx.init(mbf_params))
      report("Mini-Block Fisher (32 units)", accuracy(mbf_mlp, p), curve)
      """),
      md("""
      ### Sparse Connectivity Learning: learn which connections to keep
      `MaskedDense` layers carry a `mask` per weight; `sparse_connectivity` trains
      masks and weights together with a penalty on the number of connections.
      """),
      code("""
      class MaskedMLP(fnn.Module):
          @fnn.compact
          def __call__(self, x, train=False):
              x = fnn.relu(optzoo.MaskedDense(64)(x.reshape(len(x), -1)))
              return optzoo.MaskedDense(10)(x)
      h = fit("SCL (masked MLP)", optzoo.sparse_connectivity(0.05, count_penalty=0.1), model=MaskedMLP())
      masks = [l for path, l in jax.tree_util.tree_leaves_with_path(h["state"].params) if path[-1].key == "mask"]
      kept = sum(int((m > 0).sum()) for m in masks) / sum(m.size for m in masks)
      print(f"   connections kept: {100 * kept:.1f}%")
      """),
      md("""
      ### SVI: a monotone pseudo-gradient fed to any optax optimizer
      """),
      code("""
      svi = optzoo.SVIMLP(features=(64, 10))
      sp = svi.init(key, sub.x_train[:1].reshape(1, -1))   # the variables dict: svi_gradients calls apply_fn(sp, x)
      tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
      @jax.jit
      def svi_step(p, s, x, y):
          l, F = optzoo.svi_gradients(svi.apply, p, (x.reshape(len(x), -1), y))
          u, s = tx.update(F, s, p)
          return optax.apply_updates(p, u), s, l
      sp, curve = run_steps(svi_step, sp, tx.init(sp))
      report("SVI (pseudo-gradient + SGD)", jnp.mean(jnp.argmax(svi.apply(sp, sub.x_test.reshape(len(sub.x_test), -1)), -1) == sub.y_test), curve)
      """),
      md("""
      ### GradMax: grow a layer without changing the function
      """),
      code("""
      narrow = zn.MLP(hidden=(16,))
      h = zn.fit(narrow, optzoo.sgd(0.05, momentum=0.9), sub, epochs=EPOCHS, batch_size=64, seed=0)
      p16 = h["state"].params
      grown = optzoo.gradmax_grow(lambda p, b: loss_fn(p, b, model=narrow), p16,
                                  (sub.x_train[:128], sub.y_train[:128]), layer="Dense_0", next_layer="Dense_1", k=8)
      wide = zn.MLP(hidden=(24,))
      same = float(jnp.max(jnp.abs(wide.apply({"params": grown.params}, sub.x_test) - narrow.apply({"params": p16}, sub.x_test))))
      print(f"   16 -> 24 hidden units; max change of the logits: {same:.1e}")
      tx = optzoo.sgd(0.05, momentum=0.9)
      state = zn.create_train_state(wide, tx, sub.x_train[:1]).replace(params=grown.params)
      fit("GradMax (16 -> 24 units)", tx, model=wide, state=state);
      """),
      md("""
      ### Generic Adam, gradient noise, parameter EMA
      """),
      code("""
      print(optzoo.generic_adam_condition(learning_rate=1e-2, num_steps=1000))
      fit("Generic Adam", optzoo.generic_adam(1e-2))
      fit("gradient noise (around SGDM)", optzoo.gradient_noise(optzoo.sgd(0.05, momentum=0.9), eta=0.01))
      h = zn.fit(mlp, optax.chain(optzoo.sgd(0.05, momentum=0.9), optzoo.param_ema(0.9)), sub,
                 epochs=EPOCHS, batch_size=64, seed=0)
      report("SGDM, EMA of the weights", accuracy(mlp, optzoo.ema_params(h["state"].opt_state)), h["train_loss"])
      """),
      code("""
      names = list(results)
      fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5))
      a1.barh(names, [100 * results[n][0] for n in names], color=["C7"] + ["C0"] * (len(names) - 1))
      a1.set(xlabel="test accuracy (%)", xlim=(0, 100), title=f"{EPOCHS} epoch(s) on {len(sub.x_train)} digits")
      a1.invert_yaxis()
      a2.set_prop_cycle(color=plt.cm.tab20(np.linspace(0, 1, 20)))
      for n in names:
          c = results[n][1]
          if c is not None and len(c) > 8:
              a2.plot(np.convolve(c, np.ones(8) / 8, mode="valid"), label=n, lw=1)
      a2.set(yscale="log", xlabel="step", ylabel="training loss (smoothed)", title="training curves")
      a2.legend(fontsize=6, ncol=2); plt.tight_layout(); plt.show()
      """),
  ]

# ---------------------------------------------------------------------------
@notebook("10_large_batch_training.ipynb",
          "Large-batch training: linear scaling, warm-up, LARS, LAMB",
          """
**What this shows.** The same MLP trained on digits with batch 32 and with
large batches (256 to 4096, the same number of epochs, hence far fewer steps),
four ways: (a) no change to the batch-32 recipe, (b) the linear scaling rule
with a warm-up (Goyal et al. 2017), (c) LARS (You et al. 2017) and (d) LAMB
(You et al. 2020). For each: test accuracy, steps to a target accuracy and the
generalization gap (train minus test accuracy; Keskar et al. 2017). Gradient
accumulation with `optax.MultiSteps` gives the same step as one big batch when
the big batch does not fit in memory. LARS and LAMB are optzoo's
(`optzoo.lars`, `optzoo.lamb`: `pytorch_optimizer`'s numerics).
""")
def nb_large_batch():
  return [
      md("""
      ## Model, data and one jitted training loop
      A 64-128-10 ReLU MLP on the 1,438 training digits. `train` runs all steps
      in one `jax.lax.scan` (one compile per optimizer and batch size) and
      records the test accuracy after every step. A batch larger than the
      training set (4096) is drawn with replacement.
      """),
      code("""
      Xtr = jnp.asarray(data.x_train.reshape(len(data.x_train), -1)); Ytr = jnp.asarray(data.y_train)
      Xte = jnp.asarray(data.x_test.reshape(len(data.x_test), -1)); Yte = jnp.asarray(data.y_test)
      N = Xtr.shape[0]

      def init_params(seed=0, hidden=128):
          k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
          return {"w1": jax.random.normal(k1, (64, hidden)) / 8.0, "b1": jnp.zeros(hidden),
                  "w2": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden), "b2": jnp.zeros(10)}

      def logits_fn(p, x):
          return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

      def loss_fn(p, x, y):
          return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()

      def metrics(p, x, y):
          lg = logits_fn(p, x)
          return (optax.softmax_cross_entropy_with_integer_labels(lg, y).mean(),
                  jnp.mean(jnp.argmax(lg, -1) == y))

      def batch_indices(batch, epochs, seed=0):
          rng = np.random.default_rng(seed)
          steps = max(1, epochs * N // batch)
          if batch <= N:   # shuffled epochs
              perm = np.concatenate([rng.permutation(N) for _ in range(-(-steps * batch // N) + 1)])
              return perm[: steps * batch].reshape(steps, batch)
          return rng.integers(0, N, size=(steps, batch))   # with replacement

      def train(tx, batch, epochs, seed=0):
          idx = jnp.asarray(batch_indices(batch, epochs, seed))
          @jax.jit
          def run(params):
              def body(carry, ix):
                  p, s = carry
                  g = jax.grad(loss_fn)(p, Xtr[ix], Ytr[ix])
                  u, s = tx.update(g, s, p)
                  p = optax.apply_updates(p, u)
                  return (p, s), metrics(p, Xte, Yte)[1]
              (p, _), test_acc = jax.lax.scan(body, (params, tx.init(params)), idx)
              return p, test_acc
          p, test_acc = run(init_params(seed))
          (tr_loss, tr_acc), (te_loss, te_acc) = metrics(p, Xtr, Ytr), metrics(p, Xte, Yte)
          return dict(steps=len(idx), curve=np.asarray(test_acc), train_acc=float(tr_acc),
                      test_acc=float(te_acc), train_loss=float(tr_loss), test_loss=float(te_loss))

      def steps_to(curve, target):
          hit = np.nonzero(curve >= target)[0]
          return int(hit[0]) + 1 if hit.size else None
      """),
      md("""
      ## Gradient accumulation: `optax.MultiSteps`
      When a large batch does not fit in memory, average the gradients of `k`
      micro-batches and step once. `optax.MultiSteps(tx, every_k_schedule=k)`
      does exactly that: 4 micro-batches of 256 give the step of one batch of
      1024 (up to float round-off), and the parameters move only every 4th call.
      """),
      code("""
      tx = optax.sgd(0.1, momentum=0.9)
      p0, ix = init_params(), batch_indices(1024, 1)[0]
      big, _ = tx.update(jax.grad(loss_fn)(p0, Xtr[ix], Ytr[ix]), tx.init(p0), p0)
      p_big = optax.apply_updates(p0, big)
      acc = optax.MultiSteps(tx, every_k_schedule=4)
      p, s = p0, acc.init(p0)
      for chunk in ix.reshape(4, 256):
          u, s = acc.update(jax.grad(loss_fn)(p, Xtr[chunk], Ytr[chunk]), s, p)
          p = optax.apply_updates(p, u)
      print("max |MultiSteps(4 x 256) - one batch of 1024| =",
            max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_big))))
      """),
      md("""
      ## The four recipes
      Batch 32 with SGD + momentum 0.9 and learning rate 0.02 is the baseline.
      For a batch $B$: (a) the same optimizer and learning rate; (b) learning
      rate $0.02 \\cdot B/32$ reached by a linear warm-up over the first 15 % of
      the steps (Goyal et al. warm up over 5 of 90 epochs; with only a few
      dozen steps we warm up over a larger share); (c) `optzoo.lars` (layer-wise
      trust ratio $\\eta\\,\\|w\\|/(\\|g\\| + \\lambda \\|w\\|)$, $\\eta = 0.001$,
      momentum 0.9, weight decay $10^{-4}$, here on every leaf, biases
      included); (d) `optzoo.lamb` (Adam-type moments, layer-wise trust ratio
      $\\min(\\|w\\|, 10)/\\|u\\|$, decoupled weight decay $10^{-4}$); both with
      the same warm-up. LARS and LAMB need their own learning rate: in the full setting
      we try three or four each and keep the one with the lowest **training** loss (not
      the test accuracy, which would tune on the test set). Same epochs for all.
      """),
      code("""
      EPOCHS = 6 if FAST else 40
      BASE_B, BASE_LR, MOM, TARGET = 32, 0.02, 0.9, 0.90
      LARGE = (1024,) if FAST else (256, 1024, 4096)
      LARS_LRS = (5.0,) if FAST else (3.0, 10.0, 30.0)
      LAMB_LRS = (0.05,) if FAST else (0.01, 0.03, 0.1, 0.3)

      def warmup(lr, steps, frac=0.15):
          w = max(1, int(frac * steps))
          return optax.join_schedules([optax.linear_schedule(lr / 10, lr, w),
                                       optax.constant_schedule(lr)], [w])

      ALL = lambda p: jax.tree.map(lambda _: True, p)   # LARS: adapt and decay every leaf

      def recipes(B, steps):
          return {
              "(a) no change": {BASE_LR: optax.sgd(BASE_LR, momentum=MOM)},
              "(b) linear scaling + warm-up": {
                  BASE_LR * B / BASE_B: optax.sgd(warmup(BASE_LR * B / BASE_B, steps), momentum=MOM)},
              "(c) LARS": {lr: optzoo.lars(warmup(lr, steps), momentum=MOM, weight_decay=1e-4,
                                           trust_ratio_mask=ALL, weight_decay_mask=ALL)
                           for lr in LARS_LRS},
              "(d) LAMB": {lr: optzoo.lamb(warmup(lr, steps), weight_decay=1e-4) for lr in LAMB_LRS},
          }

      t0 = time.time()
      results = {("batch 32 baseline", BASE_B): dict(train(optax.sgd(BASE_LR, momentum=MOM), BASE_B, EPOCHS), lr=BASE_LR)}
      for B in LARGE:
          steps = len(batch_indices(B, EPOCHS))
          for name, by_lr in recipes(B, steps).items():
              runs = {lr: train(tx, B, EPOCHS) for lr, tx in by_lr.items()}
              best = min(runs, key=lambda lr: runs[lr]["train_loss"])   # chosen on training loss
              results[(name, B)] = dict(runs[best], lr=best)
      print(f"{len(results)} runs in {time.time() - t0:.1f} s\\n")
      print(f"{'recipe':30s} {'batch':>5s} {'lr':>7s} {'steps':>5s} {'test acc':>8s} {'train acc':>9s}"
            f" {'gap':>6s} {'loss gap':>8s} {'steps to ' + format(TARGET, '.0%'):>13s}")
      for (name, B), r in results.items():
          hit = steps_to(r["curve"], TARGET)
          print(f"{name:30s} {B:5d} {r['lr']:7.3f} {r['steps']:5d} {r['test_acc']:8.3f} {r['train_acc']:9.3f}"
                f" {r['train_acc'] - r['test_acc']:6.3f} {r['test_loss'] - r['train_loss']:8.3f}"
                f" {'never' if hit is None else hit:>13}")
      """),
      code("""
      names = ["(a) no change", "(b) linear scaling + warm-up", "(c) LARS", "(d) LAMB"]
      base = results[("batch 32 baseline", BASE_B)]
      fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
      ax = axes[0]
      ax.plot(np.arange(1, base["steps"] + 1), base["curve"], "k", label="batch 32")
      for n in names:
          r = results[(n, LARGE[-1])]
          ax.plot(np.arange(1, r["steps"] + 1), r["curve"], marker=".", label=n)
      ax.axhline(TARGET, color="gray", ls=":")
      ax.set(xscale="log", xlabel="step", ylabel="test accuracy", ylim=(0, 1),
             title=f"batch {LARGE[-1]} vs 32, {EPOCHS} epochs each")
      ax.legend(fontsize=8)
      for ax, key, label in ((axes[1], "test_acc", "final test accuracy"),
                             (axes[2], "gap", "generalization gap (train - test accuracy)")):
          for n in names:
              ys = [results[(n, B)]["test_acc"] if key == "test_acc" else
                    results[(n, B)]["train_acc"] - results[(n, B)]["test_acc"] for B in LARGE]
              ax.plot(LARGE, ys, marker="o", label=n)
          y0 = base["test_acc"] if key == "test_acc" else base["train_acc"] - base["test_acc"]
          ax.axhline(y0, color="k", ls="--", label="batch 32")
          ax.set(xscale="log", xlabel="batch size", title=label)
          ax.legend(fontsize=8); ax.grid(alpha=.3)
      plt.tight_layout(); plt.show()
      """),
      md("""
      **Results** (`FAST=False`: 40 epochs on all 1,438 training digits, one
      seed; measured on a CPU, 13 runs plus the learning-rate grid):

      | recipe | batch | lr | steps | test acc | train - test acc | steps to 90 % |
      |---|---|---|---|---|---|---|
      | SGD+momentum (baseline) | 32 | 0.02 | 1797 | 97.2 % | 2.4 | 52 |
      | (a) no change | 256 / 1024 / 4096 | 0.02 | 224 / 56 / 14 | 96.1 / 90.3 / 56.0 % | 0.2 / -0.3 / 2.5 | 52 / 51 / never |
      | (b) linear scaling + warm-up | 256 / 1024 / 4096 | 0.16 / 0.64 / 2.56 | 224 / 56 / 14 | 97.8 / 97.5 / 18.1 % | 2.0 / 2.2 / 0.6 | 25 / 9 / never |
      | (c) LARS | 256 / 1024 / 4096 | 3 / 30 / 30 | 224 / 56 / 14 | 97.5 / 96.7 / 85.5 % | 2.4 / 2.4 / -0.2 | 37 / 16 / never |
      | (d) LAMB | 256 / 1024 / 4096 | 0.03 / 0.03 / 0.1 | 224 / 56 / 14 | 96.4 / 96.9 / 92.2 % | 3.5 / 1.9 / 0.1 | 29 / 13 / 12 |

      **Reading it, honestly.** (a) Keeping the small-batch learning rate
      wastes the large batch: with 8x-128x fewer steps it underfits (its small
      "gap" is underfitting, not good generalization). (b) The linear scaling
      rule with warm-up recovers, and even slightly beats, batch-32 accuracy at
      batch 256 and 1024 in 8x and 32x fewer steps, and reaches 90 % in 9
      steps instead of 52. It breaks at 4096 (learning rate 2.56, 14 steps, a
      batch larger than the training set): the run diverges. (c, d) **On this
      small problem LARS and LAMB do not beat tuned linear scaling at 256 and
      1024** (0.3-1.4 points lower); their layer-wise trust ratio pays off
      only at 4096, where linear scaling diverges: LAMB reaches 92.2 % and
      LARS 85.5 %, both far below batch 32's 97.2 %. LARS's chosen learning
      rate is the largest of our grid at 1024 and 4096, so it may be
      under-tuned there. Generalization gap (Keskar et al. 2017): among the
      runs that fit the training set, the large-batch train-test accuracy gap
      is about the baseline's (1.9-3.5 vs 2.4 points), while the loss gap
      grows with the batch for (b) (0.072 at 256, 0.138 at 1024 vs 0.070): a
      mild version of the effect, on a 1,438-example data set where every
      batch >= 1024 is close to full-batch gradient descent. One seed: a point
      of accuracy is about 3-4 test images. With `FAST=True` (CI) only batch
      1024, 6 epochs (8 steps) and one learning rate per method run: the numbers
      are then much lower and only show that the code runs.
      """),
  ]


@notebook("11_port_a_pytorch_recipe.ipynb", "Port a PyTorch training recipe, same numbers",
          """
**What this shows.** A PyTorch recipe (AdamW with two parameter groups,
`LinearLR -> CosineAnnealingLR` through `SequentialLR`, gradient-norm clipping)
and its optzoo/Flax port, line by line: `optzoo.schedules.sequential_lr`,
`optzoo.param_groups`, `optax.clip_by_global_norm`. Started from torch's initial
weights, the port's losses lie on torch's (a stored torch 2.13 run, float32).
Then a run checkpointed in torch after 60 steps is resumed in JAX from the
torch optimizer and scheduler `state_dict()`s (`optzoo.from_torch_optimizer_state`)
and continues on torch's curve; a fresh optimizer state does not. The table of
every `torch.optim.lr_scheduler` class and its optzoo name is in
`docs/torch_lr_scheduler.md`.
""")
def nb_port():
  return [
      md("""
      ### The PyTorch script

      ```python
      import torch
      from torch import nn
      from torch.optim import lr_scheduler as L

      model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
      decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
      no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
      opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                               {"params": no_decay, "weight_decay": 0.0}], lr=3e-3)
      sched = L.SequentialLR(opt, [L.LinearLR(opt, 0.1, 1.0, 20),
                                   L.CosineAnnealingLR(opt, 100)], milestones=[20])
      for i in range(120):                       # batches of 64 from 512 digits, in order
          j = (i * 64) % 512
          loss = nn.functional.cross_entropy(model(x[j:j + 64]), y[j:j + 64])
          opt.zero_grad(); loss.backward()
          nn.utils.clip_grad_norm_(model.parameters(), 1.0)
          opt.step(); sched.step()
          if i == 59:                            # a checkpoint, resumed in JAX below
              torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(),
                          "model": model.state_dict()}, "ckpt.pt")
      ```
      """),
      code("""
      import io, urllib.request
      def load_fixture(name):
          # the torch run: from the repo's tests/fixtures, or from GitHub in Colab
          here = os.path.join(os.path.dirname(os.path.dirname(optzoo.__file__)), "tests", "fixtures", name)
          if os.path.exists(here):
              return np.load(here)
          url = f"https://raw.githubusercontent.com/optzoo/optzoo/main/tests/fixtures/{name}"
          return np.load(io.BytesIO(urllib.request.urlopen(url).read()))
      ref = load_fixture("torch_port_recipe.npz")
      print("torch", ref["torch_version"], "| losses of", len(ref["losses"]), "steps")
      """),
      md("""
      ### The optzoo / Flax port

      Every torch line has its counterpart: the schedulers keep their names
      (`optzoo.schedules.linear_lr`, `cosine_annealing_lr`, `sequential_lr`,
      with torch's values step for step), the parameter groups select leaves
      by their key path, and the clipping is an `optax` link before the
      optimizer.
      """),
      code("""
      import flax.linen as nn
      import json

      class MLP(nn.Module):                      # nn.Sequential(Linear(64, 32), Tanh(), Linear(32, 10))
          @nn.compact
          def __call__(self, x):
              x = jnp.tanh(nn.Dense(32, name="hidden")(x))
              return nn.Dense(10, name="head")(x)

      def from_torch(get):                        # Linear.weight (out, in) -> Dense.kernel (in, out)
          return {"hidden": {"kernel": get("0.weight").T, "bias": get("0.bias")},
                  "head": {"kernel": get("2.weight").T, "bias": get("2.bias")}}

      STEPS, BATCH, N = 120, 64, 512
      x = jnp.asarray(data.x_train[:N].reshape(N, -1)); y = jnp.asarray(data.y_train[:N])
      model = MLP()
      params0 = from_torch(lambda k: jnp.asarray(ref[f"init/{k}"]))

      S = optzoo.schedules
      lr = S.sequential_lr([S.linear_lr(3e-3, 0.1, 1.0, 20),          # LinearLR(opt, 0.1, 1.0, 20)
                            S.cosine_annealing_lr(3e-3, STEPS - 20)],   # CosineAnnealingLR(opt, 100)
                           milestones=[20])
      tx = optax.chain(
          optax.clip_by_global_norm(1.0),                               # clip_grad_norm_(params, 1.0)
          optzoo.param_groups(optzoo.adamw,                             # AdamW([{decay}, {no_decay}], lr=3e-3)
                              [{"params": "**/kernel", "weight_decay": 0.05},
                               {"params": "**/bias", "weight_decay": 0.0}],
                              defaults=dict(learning_rate=lr)))

      def loss_fn(p, xb, yb):
          return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb), yb).mean()

      @jax.jit
      def train_step(p, s, i):
          j = (i * BATCH) % N
          xb, yb = jax.lax.dynamic_slice_in_dim(x, j, BATCH), jax.lax.dynamic_slice_in_dim(y, j, BATCH)
          loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
          u, s = tx.update(g, s, p)
          return optax.apply_updates(p, u), s, loss

      def run(p, s, start, stop):
          out = []
          for i in range(start, stop):
              p, s, loss = train_step(p, s, i)
              out.append(float(loss))
          return p, s, np.asarray(out)

      t0 = time.time()
      _, _, losses = run(params0, tx.init(params0), 0, STEPS)
      print(f"optzoo port: {STEPS} steps in {time.time() - t0:.1f}s; max |loss - torch| ="
            f" {np.max(np.abs(losses - ref['losses'])):.2e}")
      """),
      code("""
      fig, ax = plt.subplots(figsize=(8, 4))
      ax.plot(ref["losses"], lw=4, alpha=0.4, label="PyTorch (fixture)")
      ax.plot(losses, "--", label="optzoo / Flax port")
      ax.set(xlabel="step", ylabel="training loss", title="same recipe, same numbers (float32)")
      ax.legend(); plt.show()
      """),
      md("""
      ### Started in torch, resumed in JAX

      `ckpt.pt` holds torch tensors; the fixture holds the same state_dict as
      NumPy arrays (torch is not needed). `param_order` names the Flax leaf of
      torch parameter 0, 1, ... (torch numbers them group by group) and `"T"`
      transposes `Linear.weight` into `Dense.kernel`.
      """),
      code("""
      R = int(ref["resume/last_epoch"])
      state_dict = {"state": {}, "param_groups": json.loads(str(ref["resume/param_groups"]))}
      for k in ref.files:
          if k.startswith("resume/state/"):
              _, _, idx, key = k.split("/")
              state_dict["state"].setdefault(int(idx), {})[key] = ref[k]
      # torch numbers its params group by group: [0.weight, 2.weight] then [0.bias, 2.bias]
      order = [("hidden/kernel", "T"), ("head/kernel", "T"), "hidden/bias", "head/bias"]
      p_r = from_torch(lambda k: jnp.asarray(ref[f"resume/{k}"]))
      s_r = optzoo.from_torch_optimizer_state(state_dict, tx.init(p_r), p_r, order,
                                              step=optzoo.from_torch_scheduler_state({"last_epoch": R}))
      _, _, resumed = run(p_r, s_r, R, STEPS)
      _, _, fresh = run(p_r, tx.init(p_r), R, STEPS)        # what forgetting the state does
      print(f"resumed at step {R}: max |loss - torch| = {np.max(np.abs(resumed - ref['losses'][R:])):.2e};"
            f" with a fresh optimizer state: {np.max(np.abs(fresh - ref['losses'][R:])):.2e}")
      fig, ax = plt.subplots(figsize=(8, 4))
      ax.plot(ref["losses"], lw=4, alpha=0.4, label="PyTorch, 120 steps")
      ax.plot(np.arange(R, STEPS), resumed, "--", label=f"torch {R} steps, then optzoo")
      ax.plot(np.arange(R, STEPS), fresh, ":", label="optzoo from a fresh state (wrong)")
      ax.axvline(R, color="k", lw=0.5); ax.set(xlabel="step", ylabel="training loss")
      ax.legend(); plt.show()
      """),
  ]


def main():
  names = []
  for name, (title, shows, fn) in NOTEBOOKS.items():
    nb = build(name, title, shows, fn())
    nbformat.validate(nb)
    with open(os.path.join(HERE, name), "w") as f:
      nbformat.write(nb, f)
    names.append(name)
  print("wrote", ", ".join(names))


if __name__ == "__main__":
  main()
