"""A small launcher for real multi-process JAX runs on localhost (tests, CI).

>>> results = launch("tests/communication/mp_worker.py", num_processes=2,
...                  devices_per_process=4, args=["--out", d], timeout=120)

Starts ``num_processes`` Python processes, each with
``XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>``,
``JAX_PLATFORMS=cpu`` and the coordinator address / process id in the
environment (``OPTZOO_COORDINATOR``, ``OPTZOO_NUM_PROCESSES``,
``OPTZOO_PROCESS_ID``; :func:`initialize` in the worker reads them). Every
process runs in its own session (process group); on a failure or a timeout
all groups are killed, so no stray worker survives a test. A free port is
picked for the coordinator.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class ProcessResult:
  process_id: int
  returncode: Optional[int]
  stdout: str
  stderr: str


class LaunchError(RuntimeError):
  pass


def _kill(procs) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
  for p in procs:
    try:
      p.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass


def launch(script: str, num_processes: int, devices_per_process: int,
           args: Sequence[str] = (), timeout: float = 120.0,
           env: Optional[dict] = None, python: Optional[str] = None
           ) -> list[ProcessResult]:
  """Runs ``script`` on ``num_processes`` local processes; raises on failure.

  Raises :class:`LaunchError` (with every process's stderr tail) when a
  process exits non-zero (also when all of them exit between two polls) or
  the run takes longer than ``timeout`` seconds; all processes are killed
  first.
  """
  port = free_port()
  base_env = dict(os.environ)
  base_env.update(env or {})
  base_env.update(
      XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices_per_process}"
                 " --xla_cpu_multi_thread_eigen=false"),
      JAX_PLATFORMS="cpu",
      OPTZOO_COORDINATOR=f"127.0.0.1:{port}",
      OPTZOO_NUM_PROCESSES=str(num_processes))
  procs, logs = [], []
  try:
    for i in range(num_processes):
      e = dict(base_env, OPTZOO_PROCESS_ID=str(i))
      out = open(_tmp(f"p{i}.out"), "w+")
      err = open(_tmp(f"p{i}.err"), "w+")
      logs.append((out, err))
      procs.append(subprocess.Popen(
          [python or sys.executable, script, *args], env=e, stdout=out,
          stderr=err, start_new_session=True))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline:
        _kill(procs)
        raise LaunchError(f"timed out after {timeout}s\n" + _tails(logs))
      if any(p.poll() not in (None, 0) for p in procs):
        # One failed: the others would hang at the next collective.
        time.sleep(0.5)
        _kill(procs)
        raise LaunchError("a process failed\n" + _tails(logs, procs))
      time.sleep(0.05)
    if any(p.returncode != 0 for p in procs):
      # All exited between two polls, at least one with an error.
      raise LaunchError("a process failed\n" + _tails(logs, procs))
    results = []
    for i, (p, (out, err)) in enumerate(zip(procs, logs)):
      out.seek(0)
      err.seek(0)
      results.append(ProcessResult(i, p.returncode, out.read(), err.read()))
    return results
  finally:
    _kill(procs)
    for out, err in logs:
      out.close()
      err.close()


_TMPDIR = None


def _tmp(name: str) -> str:
  global _TMPDIR
  if _TMPDIR is None:
    import tempfile
    _TMPDIR = tempfile.mkdtemp(prefix="optzoo_mp_")
  return os.path.join(_TMPDIR, f"{os.getpid()}_{time.monotonic_ns()}_{name}")


def _tails(logs, procs=None) -> str:
  parts = []
  for i, (out, err) in enumerate(logs):
    err.flush()
    err.seek(0)
    rc = "" if procs is None else f" rc={procs[i].poll()}"
    parts.append(f"--- process {i}{rc} stderr (tail) ---\n" + err.read()[-3000:])
  return "\n".join(parts)


def initialize() -> tuple[int, int]:
  """In a worker: ``jax.distributed.initialize`` from the launcher's env.

  Uses gloo CPU collectives. With one process (or no launcher) nothing is
  initialised. Returns ``(process_id, num_processes)``.
  """
  import jax
  n = int(os.environ.get("OPTZOO_NUM_PROCESSES", "1"))
  pid = int(os.environ.get("OPTZOO_PROCESS_ID", "0"))
  if n > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ["OPTZOO_COORDINATOR"],
                               num_processes=n, process_id=pid)
  return pid, n
