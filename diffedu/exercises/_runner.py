"""The untrusted side of the grader: a pre-loaded *zygote* process and, forked from it, one process
per submission that runs the student's cells and records what their functions return.

This module runs from the **student copy** of diffedu (no reference solutions in it), in a
process started by :class:`diffedu.exercises.sandbox.Sandbox`. The zygote imports torch, IPython
and the package once, then forks a child for every job it is sent; the child

1. reads its job (the cells to run, the inputs of every check, the limits), opens its event
   stream and points stdout/stderr at a log file;
2. isolates itself (:mod:`diffedu.exercises._jail`: namespaces, a read-only minimal root, no
   network, no capabilities) or, where the kernel does not allow that, stays a plain process;
3. sets its resource limits, replaces the package functions the exercises ask for by sentinels
   that raise, and installs an **audit hook** (PEP 578) that refuses network access, new
   processes, signals to other processes, ``ctypes``, the garbage collector's object lists,
   raising resource limits and rewriting function code — and, for a plain process, reading the
   hidden paths and writing anywhere but its working directory;
4. runs the cells in an IPython shell, each under a per-cell alarm; at each check cell it
   evaluates the checked expression and calls the function on every input of that check,
   recording the outputs (tensors as raw float64 bytes, never pickles) or the exception.

It never sees the reference solutions or their outputs: the trusted grader compares the
recorded outputs with the references afterwards. Events go out as JSON lines on a file
descriptor opened before any student code runs.
"""
from __future__ import annotations

import base64
import json
import os
import pickle
import select
import signal
import stat
import sys
import traceback

__all__ = ["SandboxViolation", "CellTimeout", "zygote_main", "encode_output", "blocked_import", "EVENTS", "LOG"]

EVENTS = "events.jsonl"
LOG = "log.txt"
MAX_ELEMENTS = 1 << 22  # outputs larger than this are recorded by shape only
_MEMORY_WORDS = ("can't allocate memory", "not enough memory", "out of memory", "bad_alloc", "cannot allocate memory")

# events the audit hook refuses in every mode
_ALWAYS = frozenset("""
socket.__new__ socket.connect socket.bind socket.getaddrinfo socket.gethostbyname socket.gethostbyname_ex
socket.gethostbyaddr socket.getnameinfo socket.sendto socket.sendmsg socket.sethostname urllib.Request
http.client.connect ftplib.connect smtplib.connect poplib.connect imaplib.open nntplib.connect
telnetlib.Telnet.open webbrowser.open
subprocess.Popen os.system os.exec os.posix_spawn os.spawn os.fork os.forkpty os.startfile
os.kill os.killpg signal.pthread_kill
ctypes.dlopen ctypes.dlsym ctypes.dlsym/handle ctypes.call_function ctypes.cdata ctypes.cdata/buffer
ctypes.addressof ctypes.string_at ctypes.wstring_at ctypes.PyObj_FromPtr ctypes.set_errno ctypes.seh_exception
gc.get_objects gc.get_referrers gc.get_referents resource.setrlimit resource.prlimit
""".split())
_CODE_ATTRS = frozenset(("__code__", "__defaults__", "__kwdefaults__"))
_READ_EVENTS = frozenset(("open", "os.listdir", "os.scandir", "glob.glob", "os.walk", "os.fwalk"))
_WRITE_EVENTS = frozenset(("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.truncate",
                           "os.utime", "os.link", "os.symlink", "shutil.rmtree", "os.chflags", "os.lchflags",
                           "os.setxattr", "os.removexattr"))
_TWO_PATHS = frozenset(("os.rename", "os.link"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxViolation(PermissionError):
    """Raised in the student's code when it does something the grading sandbox refuses."""


class CellTimeout(BaseException):
    """Raised in a cell that runs past its time limit (a BaseException, so ``except Exception`` misses it)."""


_STATE = {"fd": None, "armed": False, "limit": 0.0}


def _emit(obj: dict) -> None:
    fd = _STATE["fd"]
    if fd is None:
        return
    data = (json.dumps(obj, allow_nan=True, default=str) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def blocked_import(name: str):
    """What a name of a reference module of the student copy does when used: record it and refuse."""
    _emit({"ev": "violation", "what": "import", "detail": name})
    raise SandboxViolation(f"{name} is not available while grading (the reference solutions and checkers "
                           "are kept out of the sandbox)")


# ----------------------------------------------------------------------------- the audit hook
def _normpath(path, _getcwd=os.getcwd, _lstat=os.lstat, _readlink=os.readlink, _islink=stat.S_ISLNK,
              _fspath=os.fspath, _isinstance=isinstance, _int=int, _bytes=bytes, _list=list, _reversed=reversed):
    """The absolute path with every symlink resolved (self-contained: it uses no module globals)."""
    if path is None or _isinstance(path, _int):
        return None
    path = _fspath(path)
    if _isinstance(path, _bytes):
        path = path.decode("utf-8", "surrogateescape")
    if not path.startswith("/"):
        path = _getcwd() + "/" + path
    out, stack, hops = [], _list(_reversed(path.split("/"))), 0
    while stack:
        part = stack.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        cand = "/" + "/".join(out + [part])
        try:
            is_link = _islink(_lstat(cand).st_mode)
        except OSError:
            is_link = False
        if is_link and hops < 40:
            hops += 1
            target = _readlink(cand)
            if target.startswith("/"):
                out = []
            stack.extend(_reversed(target.split("/")))
        else:
            out.append(part)
    return "/" + "/".join(out)


def _verdict(path, rules, _len=len):
    """True (allowed) / False (denied) by the longest matching rule; allowed where none matches."""
    for root, allowed in rules:
        if path == root or path.startswith(root + "/" if root != "/" else "/"):
            return allowed
    return True


def _make_hook(read_rules, write_roots, fd):
    """The audit hook; all its state sits in default arguments so student code cannot reach it by name."""
    rules = tuple(sorted(read_rules, key=lambda r: -len(r[0])))
    write_rules = tuple((root, True) for root in sorted(write_roots, key=len, reverse=True))
    watch = _ALWAYS | {"object.__setattr__"} | ((_READ_EVENTS | _WRITE_EVENTS) if rules else frozenset())

    def hook(event, args, _watch=watch, _always=_ALWAYS, _rules=rules, _wrules=write_rules, _fd=fd,
             _norm=_normpath, _verdict=_verdict, _V=SandboxViolation, _write=os.write, _str=str,
             _isinstance=isinstance, _int=int, _read=_READ_EVENTS, _writes=_WRITE_EVENTS, _two=_TWO_PATHS,
             _code=_CODE_ATTRS, _flags=_WRITE_FLAGS, _readlink=os.readlink, _fspath=os.fspath, _bytes=bytes,
             _protected=(_normpath, _verdict)):
        if event not in _watch:
            return
        if event == "object.__setattr__":  # protect the hook's helpers (reachable from a frame inside it)
            if _isinstance(args[1], _str) and args[1] in _code and args[0] in _protected:
                what = "rewriting the sandbox's " + args[1]
            else:
                return
        elif event in _always:
            what = event
        else:
            what, paths, writing = None, [args[0]], event in _writes
            if event in _two:
                paths.append(args[1])
            if event == "open":
                mode, flags = args[1], args[2]
                raw = args[0]
                if mode is None and not _isinstance(raw, _int):  # os.open: a relative path may hide a dir_fd
                    raw = _fspath(raw)
                    if not (raw.startswith(b"/") if _isinstance(raw, _bytes) else raw.startswith("/")):
                        paths = []
                        what = "os.open of a relative path " + _str(raw)
                writing = (_isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or (
                    _isinstance(flags, _int) and (flags & _flags) != 0)
            dir_fd = args[-1] if event in ("os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree") else None
            what = what if event == "open" and not paths else None
            for p in paths:
                if _isinstance(dir_fd, _int) and dir_fd >= 0 and not _isinstance(p, _int):
                    p = _readlink("/proc/self/fd/" + _str(dir_fd)) + "/" + _str(p)
                full = _norm(p)
                if full is None:
                    continue
                if not _verdict(full, _rules) or (writing and not _verdict(full, _wrules + (("/", False),))):
                    what = event + " " + full
                    break
            if what is None:
                return
        text = what.replace("\\", "/").replace('"', "'").replace("\n", " ")[:300]
        try:
            _write(_fd, ('{"ev": "violation", "what": "' + event + '", "detail": "' + text + '"}\n').encode())
        except OSError:
            pass
        raise _V("refused while grading: " + text)

    return hook


# ----------------------------------------------------------------------------- sentinels
def _resolve(dotted: str):
    # the same walk as assignments.resolve_name, kept here on purpose: the untrusted side imports
    # nothing of the grader (whose modules are stubs in the student's process)
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:-1]:
            owner = getattr(owner, attr)
        return owner, parts[-1]
    raise ImportError(dotted)


def _sentinel(dotted: str, exercises: str):
    def disabled(*args, **kwargs):
        raise SandboxViolation(f"{dotted} is disabled while grading: exercise {exercises} asks you to write it yourself")

    disabled.__name__ = dotted.rsplit(".", 1)[-1]
    disabled.__qualname__ = dotted
    return disabled


def _install_sentinels(disabled: dict) -> list[str]:
    """Replace each named function (and its aliases in loaded diffedu modules) by a sentinel that raises."""
    import inspect

    done = []
    for dotted, exercises in sorted(disabled.items()):
        try:
            owner, attr = _resolve(dotted)
            raw = inspect.getattr_static(owner, attr)
        except (ImportError, AttributeError):
            continue
        original = getattr(owner, attr)
        fn = _sentinel(dotted, exercises)
        wrapped = {staticmethod: staticmethod, classmethod: classmethod, property: property}.get(type(raw))
        setattr(owner, attr, wrapped(fn) if wrapped else fn)
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] == "diffedu" and module is not None:
                for key, value in list(vars(module).items()):
                    if value is original:
                        setattr(module, key, fn)
        done.append(dotted)
    return done


# ----------------------------------------------------------------------------- outputs
def encode_output(out) -> dict:
    """A JSON-ready record of what a student's function returned (raw float64 bytes, never a pickle)."""
    import numpy as np
    import torch

    if isinstance(out, np.generic):
        out = np.asarray(out)
    if isinstance(out, np.ndarray):
        if out.dtype.kind not in "biufc":
            return {"k": "other", "type": "ndarray"}
        out = torch.from_numpy(np.ascontiguousarray(out))
    if torch.is_tensor(out):
        shape = [int(s) for s in out.shape]
        if out.is_complex():
            return {"k": "complex", "shape": shape, "dtype": str(out.dtype).replace("torch.", "")}
        if out.dtype == torch.bool:
            return {"k": "bool", "shape": shape}
        if out.numel() > MAX_ELEMENTS:
            return {"k": "other", "type": "oversized_tensor"}
        try:
            arr = out.detach().to("cpu", torch.float64).contiguous().numpy()
        except (RuntimeError, TypeError):
            return {"k": "other", "type": type(out).__name__}
        return {"k": "tensor", "shape": shape, "data": base64.b64encode(arr.tobytes()).decode("ascii")}
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        return {"k": "scalar", "v": float(out)}
    return {"k": "other", "type": type(out).__name__[:60]}


def _raised(e: BaseException) -> dict:
    try:
        msg = str(e)[:500]
    except Exception:  # noqa: BLE001 - a student exception with a broken __str__
        msg = "<unprintable>"
    return {"k": "raise", "ename": type(e).__name__[:60], "msg": msg, "ni": isinstance(e, NotImplementedError),
            "blocked": isinstance(e, SandboxViolation), "memory": _is_memory(e)}


def _is_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    try:
        text = str(e).lower()
    except Exception:  # noqa: BLE001
        return False
    return isinstance(e, RuntimeError) and any(w in text for w in _MEMORY_WORDS)


def _error_record(e: BaseException) -> dict:
    kind = ("timeout" if isinstance(e, CellTimeout) else "blocked" if isinstance(e, SandboxViolation)
            else "memory" if _is_memory(e) else "error")
    rec = _raised(e)
    return {"ename": rec["ename"], "evalue": rec["msg"], "kind": kind}


# ----------------------------------------------------------------------------- running cells
def _on_alarm(signum, frame):
    if _STATE["armed"]:
        _STATE["armed"] = False
        raise CellTimeout(f"cell time limit ({_STATE['limit']:g} s) exceeded")


def _timed(limit: float, fn):
    """Run ``fn()`` under the per-cell alarm; a :class:`CellTimeout` that escapes it is returned."""
    _STATE["armed"], _STATE["limit"] = True, limit
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return fn()
    except CellTimeout as e:
        return e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _STATE["armed"] = False


def _make_shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.HistoryManager.hist_file = ":memory:"
    cfg.InteractiveShell.colors = "NoColor"
    cfg.InteractiveShell.xmode = "Plain"
    shell = InteractiveShell.instance(config=cfg)
    shell.user_ns["__name__"] = "__main__"
    return shell


def _run_code(shell, source: str):
    result = shell.run_cell(source, store_history=False)
    err = result.error_before_exec or result.error_in_exec
    return None if err is None else _error_record(err)


def _check(shell, exercise: str, expr: str, blob: bytes) -> dict:
    """Evaluate the checked expression and call it on every input of the check."""
    try:
        fn = eval(compile(expr, f"<check {exercise}>", "eval"), shell.user_ns)  # noqa: S307 - the student's own code
    except CellTimeout:
        raise
    except BaseException as e:  # noqa: BLE001 - any failure is the student's
        return {"ev": "check", "exercise": exercise, "status": "unavailable", "error": _error_record(e)}
    outputs = []
    for args, kwargs in pickle.loads(blob):
        try:
            outputs.append(encode_output(fn(*args, **kwargs)))
        except CellTimeout:
            raise
        except BaseException as e:  # noqa: BLE001
            outputs.append(_raised(e))
    return {"ev": "check", "exercise": exercise, "status": "ok", "outputs": outputs}


def _run_check_cell(shell, cell: dict, checks: dict, blobs: dict, limit: float):
    def body():
        for ex in cell["exercises"]:
            _emit(_check(shell, ex, checks[ex], blobs[ex]))
            done.append(ex)

    done: list = []
    out = _timed(limit, body)
    if isinstance(out, CellTimeout):
        for ex in cell["exercises"]:
            if ex not in done:
                _emit({"ev": "check", "exercise": ex, "status": "timeout"})
        return _error_record(out)
    return None


def _run_cells(shell, job: dict, blobs: dict) -> None:
    limit = float(job["limits"]["cell_timeout"])
    skip = set(job.get("skip", ()))
    for cell in job["cells"]:
        if cell["i"] in skip:
            continue
        _emit({"ev": "start", "i": cell["i"]})
        if cell["kind"] == "check":
            err = _run_check_cell(shell, cell, job["checks"], blobs, limit)
        else:
            out = _timed(limit, lambda: _run_code(shell, cell["source"]))
            err = _error_record(out) if isinstance(out, CellTimeout) else out
        _emit({"ev": "end", "i": cell["i"], "error": err})
        sys.stdout.flush()


# ----------------------------------------------------------------------------- one job
def _load_job(job_dir: str):
    with open(os.path.join(job_dir, "job.json")) as fh:
        job = json.load(fh)
    blobs = {}
    for ex in job["checks"]:
        with open(os.path.join(job_dir, f"cases-{job['blob_ids'][ex]}.pkl"), "rb") as fh:
            blobs[ex] = fh.read()
    return job, blobs


def _redirect(job_dir: str, keep: int) -> None:
    """stdin from /dev/null, stdout/stderr to the log; close every other inherited descriptor."""
    log = os.open(os.path.join(job_dir, LOG), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in (null, log):
        os.close(fd)
    try:
        open_fds = [int(f) for f in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(3, 256))
    for fd in open_fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _isolate(job: dict) -> str:
    """Enter the jail (namespace mode) or stay a limited plain process; return the mode in force."""
    from . import _jail

    lim, paths = job["limits"], job["paths"]
    cpu = float(lim["notebook_timeout"]) + 10
    if job["isolation"] == "namespace":
        _jail.enter_jail(paths["root"], paths["workdir"], paths["pkg_root"], paths["mask"], int(lim["tmp_mb"]))
        _jail.set_limits(lim["memory_mb"], cpu, lim["file_mb"], nproc=int(lim["nproc"]))
        home = _jail.HOME
    else:
        os.chdir(paths["workdir"])
        _jail.set_limits(lim["memory_mb"], cpu, lim["file_mb"])
        home = paths["workdir"]
    tmp = "/tmp" if job["isolation"] == "namespace" else os.path.join(home, ".tmp")
    os.makedirs(tmp, exist_ok=True)
    os.environ.update(HOME=home, TMPDIR=tmp, PWD=home, IPYTHONDIR=os.path.join(home, ".ipython"),
                      MPLCONFIGDIR=os.path.join(home, ".config", "matplotlib"))
    import tempfile

    tempfile.tempdir = tmp
    os.umask(0o077)
    return job["isolation"]


def _guard(job: dict) -> None:
    """Install the audit hook: path rules only for a plain process (the jail has its own root)."""
    paths = job["paths"]
    if job["isolation"] == "namespace":
        rules, writes = (), ()
    else:
        pid = str(os.getpid())
        allow = list(paths["allow_read"]) + [paths["workdir"], f"/proc/{pid}", "/proc/self", "/proc/thread-self",
                                               "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys"]
        rules = [(os.path.realpath(p), True) for p in allow] + [(os.path.realpath(p), False) for p in paths["deny_read"]]
        rules += [("/proc", False)]
        writes = [os.path.realpath(paths["workdir"]), "/dev/null"]
        import shutil

        shutil._use_fd_functions = False  # rmtree by path: every step is then an audited, absolute path
    sys.addaudithook(_make_hook(rules, writes, _STATE["fd"]))


def _child(job_dir: str) -> None:
    code, stage = 70, "start"
    try:
        os.setpgid(0, 0)
        from . import _jail

        _jail.die_with_parent()  # the zygote gone (the grader stopped) -> so are we
        job, blobs = _load_job(job_dir)
        _STATE["fd"] = os.open(os.path.join(job_dir, EVENTS), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _redirect(job_dir, _STATE["fd"])
        stage = "isolation"
        mode = _isolate(job)
        stage = "setup"
        signal.signal(signal.SIGALRM, _on_alarm)
        shell = _make_shell()
        disabled = _install_sentinels(job.get("disabled", {}))
        _guard(job)
        import diffedu

        _emit({"ev": "ready", "isolation": mode, "pid": os.getpid(), "disabled": disabled,
               "package": os.path.dirname(diffedu.__file__)})
        stage = "cells"
        _run_cells(shell, job, blobs)
        _emit({"ev": "done"})
        code = 0
    except BaseException as e:  # noqa: BLE001 - report whatever went wrong before or between cells
        _emit({"ev": "fatal", "stage": stage, "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()[-3000:]})
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# ----------------------------------------------------------------------------- the zygote
def _preload(modules) -> list[str]:
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module that does not import is simply not preloaded
            failed.append(name)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    return failed


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _reap(children: set) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _reply({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _kill_all(children: set) -> None:
    for pid in list(children):
        for fn in (os.killpg, os.kill):
            try:
                fn(pid, signal.SIGKILL)
            except OSError:
                pass


def zygote_main(preload_json: str = "[]") -> None:
    """Preload the modules, then fork one child per ``{"job": DIR, "tag": T}`` line read on stdin.

    Replies on stdout: ``{"ready": ...}`` once, ``{"tag": T, "pid": P}`` per job and
    ``{"exit": P, "code": C}`` when a child ends. Exits when stdin closes.
    """
    import threading

    failed = _preload(json.loads(preload_json))
    import diffedu

    _reply({"ready": True, "package": os.path.dirname(diffedu.__file__), "failed": failed,
            "threads": threading.active_count(), "pid": os.getpid()})
    buf, children = b"", set()
    while True:
        ready, _, _ = select.select([0], [], [], 0.1)
        _reap(children)
        if not ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the grader closed our input (or died): end every submission still running
            _kill_all(children)
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(req["job"])
            children.add(pid)
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass
            _reply({"tag": req["tag"], "pid": pid})
