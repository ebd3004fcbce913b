"""The grading sandbox, trusted side: one process per submission, limited, isolated, watched.

:class:`Sandbox` starts a *zygote* (``python -I -B``, running the student copy of diffedu built
by :func:`build_student_package`, with torch, IPython and the package preloaded) and asks it to
fork one child per submission (:mod:`diffedu.exercises._runner` is the child's side). For each
child it

* prepares a fresh temporary working directory (the child's ``$HOME`` and cwd) and a job
  folder the child reads before it runs any student code;
* watches the child's event stream: a cell that runs past ``cell_timeout`` is first interrupted
  inside the child (an alarm); if it is still running ``grace`` seconds later, the child's whole
  process group (and, with namespaces, its PID namespace) is killed and the submission is run
  again in a fresh process *without* that cell, so the other exercises are still graded; at
  ``notebook_timeout`` (all attempts together) the child is killed for good;
* kills the child if its event stream grows past 64 MB.

Isolation (``isolation=``): ``"namespace"`` (Linux user namespaces: see
:mod:`diffedu.exercises._jail`), ``"process"`` (a plain process with resource limits and the audit
hook's path rules), or ``"auto"`` (namespace where the kernel allows it, else process). What
each mode does and does not prevent is listed in the README's classroom section.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import _runner

__all__ = ["Limits", "SandboxJob", "RunResult", "Sandbox", "build_student_package", "ISOLATION_MODES", "PRELOAD"]

ISOLATION_MODES = ("auto", "namespace", "process")
#: modules the zygote imports once, so each submission starts in milliseconds
PRELOAD = ("numpy", "torch", "matplotlib", "matplotlib.pyplot", "IPython.core.interactiveshell", "traitlets.config",
           "cloudpickle", "tqdm.auto", "diffedu", "diffedu.data", "diffedu.engine", "diffedu.toy", "diffedu.viz",
           "diffedu.notebook", "diffedu.exercises.core", "diffedu.exercises._jail")
_MAX_EVENT_BYTES = 64 * 2**20
_MAX_ATTEMPTS = 20
_KEEP_IN_EXERCISES = ("core.py", "_runner.py", "_jail.py")
_STUDENT_INIT = '''"""The student copy of diffedu.exercises: the checker machinery only (no reference solutions)."""
from .core import Case, CheckResult, ExerciseFailed, check, diagnose

__all__ = ["Case", "CheckResult", "ExerciseFailed", "check", "diagnose"]
'''
_STUB = '''"""Not available while grading: this module holds reference solutions or imports them.

Importing it works (a set-up cell may import a chapter module); using any of its names is refused.
"""
from ._runner import blocked_import as _blocked


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    _blocked(f"{__name__}.{name}")
'''


@dataclass(frozen=True)
class Limits:
    """Limits of one submission: seconds per cell and per notebook, memory and file sizes in MB.

    ``grace``: seconds between the per-cell alarm and the hard kill; ``nproc``: processes and
    threads allowed inside the namespace jail; ``tmp_mb``: size of the jail's private ``/tmp``.
    """

    cell_timeout: float = 60.0
    notebook_timeout: float = 600.0
    memory_mb: float = 4096.0
    file_mb: float = 64.0
    grace: float = 3.0
    nproc: int = 16
    tmp_mb: int = 256

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{f.name}: expected a positive number, got {value!r}")
        if self.memory_mb < 512:
            raise ValueError(f"memory_mb: at least 512 MB are needed to load torch, got {self.memory_mb!r}")

    def to_dict(self) -> dict:
        """The limits as a plain dict (stored in the gradebook and the job)."""
        return asdict(self)


@dataclass
class SandboxJob:
    """What one submission runs: ``cells`` in order (``{"i", "kind": "code", "source"}`` or
    ``{"i", "kind": "check", "exercises"}``), the checked expression per exercise, the pickled
    inputs per exercise, the package functions to disable (dotted name -> exercise ids) and
    files to put in the working directory."""

    cells: list
    checks: dict
    blobs: dict
    disabled: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """What happened: per-cell errors, per-exercise check records, violations, kills and timing."""

    isolation: str = ""
    cells: dict = field(default_factory=dict)     # cell index -> error record (None: ran cleanly)
    killed: dict = field(default_factory=dict)    # cell index -> "timeout" | "crashed" (skipped afterwards)
    checks: dict = field(default_factory=dict)    # exercise -> the child's check record
    violations: list = field(default_factory=list)
    notebook_timeout: bool = False
    fatal: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    log: str = ""


def build_student_package(dest) -> Path:
    """Copy diffedu into ``dest/diffedu`` without the reference solutions; return ``dest``.

    ``diffedu/exercises/`` keeps only the checker machinery and the sandbox's child side; every
    other module there (the chapter modules with their references, the grader) becomes a stub:
    importing it works, using any name from it is recorded and refused. Bytecode caches of
    ``exercises/`` are not copied.
    """
    import diffedu

    dest = Path(dest)
    if not dest.is_dir():
        raise ValueError(f"dest: expected an existing folder, got {str(dest)!r}")
    src = Path(diffedu.__file__).resolve().parent
    target = dest / "diffedu"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("*.ipynb"), dirs_exist_ok=False)
    ex = target / "exercises"
    names = {p.name for p in ex.iterdir()}
    shutil.rmtree(ex)
    ex.mkdir()
    for name in _KEEP_IN_EXERCISES:
        shutil.copy2(src / "exercises" / name, ex / name)
    (ex / "__init__.py").write_text(_STUDENT_INIT)
    for name in sorted(names):
        if name.endswith(".py") and name not in _KEEP_IN_EXERCISES and name != "__init__.py":
            (ex / name).write_text(_STUB)
    return dest


def _clean_env(home: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
           "MPLCONFIGDIR": str(home / "mpl"), "IPYTHONDIR": str(home / "ipython"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for key in ("DIFFEDU_FAST", "TZ"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _kill(pid: int) -> None:
    for fn in (os.killpg, os.kill):
        try:
            fn(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class _Zygote:
    """The preloaded process that forks the children, and the thread that reads its replies."""

    def __init__(self, pkg_root: Path, home: Path, preload, timeout: float = 600.0):
        boot = (f"import sys; sys.path.insert(0, {str(pkg_root)!r}); "
                "from diffedu.exercises._runner import zygote_main; zygote_main(sys.argv[1])")
        self._log = open(home / "zygote.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", boot, json.dumps(list(preload))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=_clean_env(home), cwd=str(home), start_new_session=True)
        self.lock = threading.Lock()
        self.replies: dict = {}
        self.exits: dict = {}
        self.ready = threading.Event()
        self.info: dict = {}
        self.dead = False
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout) or self.dead:
            self.close()
            raise RuntimeError(f"the grading sandbox did not start (see {home / 'zygote.log'})")
        if not self.info.get("package", "").startswith(str(pkg_root)):
            self.close()
            raise RuntimeError(f"the sandbox imported diffedu from {self.info.get('package')!r}, not the student copy")

    def _slot(self, table: dict, key):
        with self.lock:
            return table.setdefault(key, [threading.Event(), None])

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                self.info = msg
                self.ready.set()
            elif "tag" in msg:
                slot = self._slot(self.replies, msg["tag"])
                slot[1] = msg["pid"]
                slot[0].set()
            elif "exit" in msg:
                slot = self._slot(self.exits, msg["exit"])
                slot[1] = msg["code"]
                slot[0].set()
        self.dead = True
        self.ready.set()
        with self.lock:
            for slot in list(self.replies.values()) + list(self.exits.values()):
                slot[0].set()

    def spawn(self, job_dir: Path) -> int:
        """Fork a child for the job in ``job_dir``; its pid (also its process group)."""
        tag = str(job_dir)
        slot = self._slot(self.replies, tag)
        with self.lock:
            if self.dead:
                raise RuntimeError("the grading sandbox's zygote has exited")
            self.proc.stdin.write((json.dumps({"job": str(job_dir), "tag": tag}) + "\n").encode())
            self.proc.stdin.flush()
        if not slot[0].wait(60) or slot[1] is None:
            raise RuntimeError("the grading sandbox did not start a process for a submission")
        return int(slot[1])

    def wait_exit(self, pid: int, timeout: float):
        """The child's exit code once it has exited (None while it runs)."""
        slot = self._slot(self.exits, pid)
        if slot[0].wait(timeout) and (slot[1] is not None or self.dead):
            return slot[1] if slot[1] is not None else -9
        return None

    def close(self):
        """Close the zygote's input (it exits), waiting a little before killing it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            _kill(self.proc.pid)
            self.proc.wait()
        self._log.close()


def _package_dir() -> Path:
    import diffedu

    return Path(diffedu.__file__).resolve().parent


def _source_checkout(pkg: Path) -> Path | None:
    """The repository holding the package, if it is a source checkout (chapters with solutions live there)."""
    parent = pkg.parent
    return parent if any((parent / m).exists() for m in ("pyproject.toml", "setup.py", ".git")) else None


def _python_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover
        pass
    return sorted(os.path.realpath(p) for p in paths if p and os.path.isdir(p))


class Sandbox:
    """Runs submissions in isolated, limited child processes (see the module docstring).

    ``hide``: extra host paths the student code must not read (process mode) or see (namespace
    mode), e.g. the folder of submissions or a copy of the chapters with solutions;
    ``preload``: extra modules to import once in the zygote. Use as a context manager, or call
    :meth:`close`. Thread-safe: several threads may call :meth:`run` at once.
    """

    def __init__(self, isolation: str = "auto", *, hide=(), preload=(), tmp_dir=None):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation: expected one of {', '.join(ISOLATION_MODES)}, got {isolation!r}")
        if not sys.platform.startswith("linux") and isolation == "namespace":
            raise ValueError("isolation: 'namespace' needs Linux; use 'process' (or 'auto')")
        self.requested = isolation
        self.hide = [str(Path(p).resolve()) for p in hide]
        self.preload = tuple(dict.fromkeys(PRELOAD + tuple(preload)))
        self.tmp_dir = tmp_dir
        self._ns_ok = None if isolation == "auto" and sys.platform.startswith("linux") else isolation == "namespace"
        self._counter = 0
        self._lock = threading.Lock()
        self._zygote = None
        self.root = None

    # -- lifecycle
    def start(self) -> "Sandbox":
        """Build the student copy of the package and start the zygote (idempotent)."""
        with self._lock:
            if self._zygote is not None and not self._zygote.dead:
                return self
            if self.root is None:
                self.root = Path(tempfile.mkdtemp(prefix="diffedu-grade-", dir=self.tmp_dir)).resolve()
                for sub in ("pkg", "home", "jobs", "work"):
                    (self.root / sub).mkdir()
                build_student_package(self.root / "pkg")
            self._zygote = _Zygote(self.root / "pkg", self.root / "home", self.preload)
        return self

    def close(self) -> None:
        """Stop the zygote and delete the sandbox's temporary folders."""
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- one submission
    def _isolation(self) -> str:
        if self._ns_ok is None:
            return "namespace"  # auto: try it; a failure switches this sandbox to process mode
        return "namespace" if self._ns_ok else "process"

    def _paths(self, job_dir: Path, workdir: Path) -> dict:
        pkg = _package_dir()
        repo = _source_checkout(pkg)
        deny = [str(pkg), str(self.root)] + ([str(repo)] if repo else []) + self.hide
        return {"root": str(job_dir / "root"), "workdir": str(workdir), "pkg_root": str(self.root / "pkg"),
                "mask": [str(pkg)] + self.hide, "deny_read": deny,
                "allow_read": _python_paths() + [str(self.root / "pkg")]}

    def _prepare(self, job: SandboxJob, limits: Limits, skip, isolation: str):
        with self._lock:
            self._counter += 1
            n = self._counter
        job_dir, workdir = self.root / "jobs" / str(n), self.root / "work" / str(n)
        (job_dir / "root").mkdir(parents=True)
        workdir.mkdir(parents=True)
        for name, data in job.files.items():
            (workdir / Path(name).name).write_bytes(data)
        blob_ids = {ex: k for k, ex in enumerate(sorted(job.blobs))}
        for ex, k in blob_ids.items():
            (job_dir / f"cases-{k}.pkl").write_bytes(job.blobs[ex])
        spec = {"cells": job.cells, "checks": job.checks, "blob_ids": blob_ids, "disabled": job.disabled,
                "skip": sorted(skip), "isolation": isolation, "limits": limits.to_dict(),
                "paths": self._paths(job_dir, workdir)}
        (job_dir / "job.json").write_text(json.dumps(spec))
        return job_dir, workdir

    def _attempt(self, job_dir: Path, deadline: float, limits: Limits):
        """Spawn one child and watch it: ``(events, running cell or None, how it ended, exit code)``."""
        zygote = self._zygote
        pid = zygote.spawn(job_dir)
        stream = _EventStream(job_dir / _runner.EVENTS)
        running, started, ended, code = None, 0.0, None, None
        while True:
            code = zygote.wait_exit(pid, 0.05)
            for ev in stream.read():
                if ev.get("ev") == "start" and isinstance(ev.get("i"), int):
                    running, started = ev["i"], time.monotonic()
                elif ev.get("ev") in ("end", "done"):
                    running = None
            if code is not None:
                ended = "exit"
                break
            now = time.monotonic()
            if running is not None and now - started > limits.cell_timeout + limits.grace:
                ended = "cell_timeout"
            elif now > deadline:
                ended = "notebook_timeout"
            elif stream.size > _MAX_EVENT_BYTES:
                ended = "output"
            if ended:
                _kill(pid)
                code = zygote.wait_exit(pid, 10)
                break
        for ev in stream.read(final=True):
            if ev.get("ev") in ("end", "done"):
                running = None
        return stream.events, running, ended, code

    def run(self, job: SandboxJob, limits: Limits, isolation: str | None = None) -> RunResult:
        """Run one submission to the end (re-running it without any cell that had to be killed).

        ``isolation`` (``"namespace"`` or ``"process"``) overrides the sandbox's mode for this run.
        """
        if isolation not in (None, "namespace", "process"):
            raise ValueError(f"isolation: expected 'namespace', 'process' or None, got {isolation!r}")
        if not isinstance(job, SandboxJob):
            raise ValueError(f"job: expected a SandboxJob, got {type(job).__name__}")
        if not isinstance(limits, Limits):
            raise ValueError(f"limits: expected a Limits, got {type(limits).__name__}")
        self.start()
        res, t0, skip = RunResult(), time.monotonic(), set()
        deadline = t0 + limits.notebook_timeout
        while res.attempts < _MAX_ATTEMPTS:
            res.attempts += 1
            mode = isolation or self._isolation()
            job_dir, workdir = self._prepare(job, limits, skip, mode)
            try:
                events, running, ended, code = self._attempt(job_dir, deadline, limits)
            finally:
                res.log = _tail(job_dir / _runner.LOG)
                shutil.rmtree(job_dir, ignore_errors=True)
                shutil.rmtree(workdir, ignore_errors=True)
            fatal = _merge(res, events)
            if fatal is not None and fatal.get("stage") == "isolation" and self.requested == "auto" and not isolation:
                self._ns_ok = False  # the kernel refuses namespaces here: use process isolation from now on
                continue
            if fatal is not None:
                res.fatal = f"{fatal.get('stage')}: {fatal.get('error')}"
                break
            if self.requested == "auto" and res.isolation == "namespace" and not isolation:
                self._ns_ok = True
            if any(ev.get("ev") == "done" for ev in events):
                break
            if ended == "notebook_timeout" or time.monotonic() >= deadline:
                res.notebook_timeout = True
                if running is not None:
                    res.killed[running] = "timeout"
                break
            if running is None:
                res.fatal = f"the submission's process ended outside any cell (exit code {code})"
                break
            res.killed[running] = "timeout" if ended == "cell_timeout" else "crashed"
            skip.add(running)
        res.seconds = time.monotonic() - t0
        return res


class _EventStream:
    """Reads the JSON lines a child appends to its event file (malformed lines are skipped)."""

    def __init__(self, path: Path):
        self.path, self.fh, self.buf, self.size, self.events = path, None, b"", 0, []

    def read(self, final: bool = False) -> list:
        """The events appended since the last call (``final``: also a last line without newline)."""
        if self.fh is None:
            if not self.path.exists():
                return []
            self.fh = open(self.path, "rb")
        chunk = self.fh.read(_MAX_EVENT_BYTES)
        self.size += len(chunk)
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        if final:
            lines.append(self.buf)
            self.fh.close()
        new = []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                new.append(ev)
        self.events += new
        return new


def _merge(res: RunResult, events: list):
    """Fold one attempt's events into ``res``; the fatal event, if any."""
    fatal, current = None, None
    for ev in events:
        kind = ev.get("ev")
        if kind == "ready":
            res.isolation = str(ev.get("isolation", ""))
        elif kind == "start" and isinstance(ev.get("i"), int):
            current = ev["i"]
        elif kind == "end" and isinstance(ev.get("i"), int):
            res.cells[ev["i"]] = ev.get("error") if isinstance(ev.get("error"), dict) else None
            current = None
        elif kind == "check" and isinstance(ev.get("exercise"), str):
            res.checks[ev["exercise"]] = ev
        elif kind == "violation":
            v = {"what": str(ev.get("what", ""))[:80], "detail": str(ev.get("detail", ""))[:300], "cell": current}
            if v not in res.violations:
                res.violations.append(v)
        elif kind == "fatal":
            fatal = ev
    return fatal


def _tail(path: Path, n: int = 20000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
