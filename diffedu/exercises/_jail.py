"""Kernel-level isolation of one submission's process (Linux), set up before any student code runs.

:func:`enter_jail` moves the calling process into new user, mount, network, PID, IPC and UTS
namespaces (no root needed where unprivileged user namespaces are allowed), builds a minimal
root file system and ``chroot``\\ s into it, then drops every capability:

* the new root holds, **read-only**, the system libraries (``/usr``, ``/lib*``, ``/bin``, a few
  files of ``/etc``), the Python installation and its site-packages, and the student copy of
  diffedu (without the reference solutions); the real package directory and any path the
  teacher hides are masked with empty mounts; ``/home/student`` is the submission's fresh
  working directory (read-write), ``/tmp`` and ``/dev/shm`` are small private tmpfs, ``/dev``
  has only null, zero, full, random and urandom, ``/proc`` shows only the submission's processes;
* the network namespace has no interface but a downed loopback: nothing can be reached;
* the process is PID 1 of its namespace: when it dies, every process it started dies with it;
* all capabilities are dropped (bounding set emptied, ``no_new_privs``), so the mounts cannot be
  undone and nothing regains privileges through exec.

:func:`set_limits` applies the resource limits (address space, CPU seconds, file size, core
dumps, number of processes). Everything here is Linux-only; :func:`namespaces_supported` says
whether the kernel lets this user create the namespaces.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import site
import sys

__all__ = ["JailError", "enter_jail", "set_limits", "namespaces_supported", "die_with_parent", "HOME"]

#: the submission's working directory inside the jail
HOME = "/home/student"

_CLONE = {"ns": 0x00020000, "user": 0x10000000, "net": 0x40000000, "pid": 0x20000000,
          "ipc": 0x08000000, "uts": 0x04000000}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
_ST_TO_MS = ((1, MS_RDONLY), (2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, 1024), (2048, 2048),
             (4096, 1 << 21))
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT = 1, 24, 38, 47
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
        "/etc/group", "/etc/nsswitch.conf")
_DEVICES = ("null", "zero", "full", "random", "urandom")


class JailError(OSError):
    """A step of the isolation failed (the message names the step)."""


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str):
    err = ctypes.get_errno()
    raise JailError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    if _libc().mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        _fail(f"mount {src or fstype} on {dst}")


def _flags_of(path: str) -> int:
    """The mount flags of the file system holding ``path`` (a read-only remount must keep the locked ones)."""
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if f & st)


def namespaces_supported() -> bool:
    """Whether this process may create a user namespace (tried in a throw-away child)."""
    if not sys.platform.startswith("linux"):
        return False
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ok = _libc().unshare(_CLONE["user"] | _CLONE["ns"] | _CLONE["net"] | _CLONE["pid"]) == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _enter_namespaces() -> None:
    """unshare + identity uid/gid maps; then fork: the parent waits and exits with the child's status."""
    uid, gid = os.getuid(), os.getgid()
    flags = 0
    for f in _CLONE.values():
        flags |= f
    if _libc().unshare(flags) != 0:
        _fail("unshare (user, mount, network, PID namespaces)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # (re)armed in the new namespace
    pid = os.fork()
    if pid:  # the outer process: wait for PID 1 of the new namespace and exit with its status
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(sig, signal.SIG_IGN)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the outer process killed -> so are we


def _bind(root: str, src: str, *, ro: bool = True) -> None:
    dst = root + src
    if os.path.islink(src):  # merged /usr: /bin -> usr/bin
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink(os.readlink(src), dst)
        return
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    if ro:
        _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _flags_of(src))


def _mask(root: str, path: str) -> None:
    """Hide ``path`` inside the new root (if it is there) behind an empty read-only mount."""
    dst = root + path
    if not os.path.lexists(dst) or os.path.islink(dst):
        return
    if os.path.isdir(dst):
        _mount("tmpfs", dst, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    else:
        _mount("/dev/null", dst, None, MS_BIND)


def _python_trees(pkg_root: str) -> list[str]:
    """The Python installation, the environment and its site-packages, and the student package, deduplicated."""
    trees = [sys.base_prefix, sys.prefix, pkg_root]
    try:
        trees += site.getsitepackages()
    except AttributeError:  # pragma: no cover - old virtualenv
        pass
    trees = sorted({os.path.realpath(t) for t in trees if t and os.path.isdir(t)})
    out = []
    for t in trees:
        inside = [o for o in out + list(_SYSTEM) if t == o or t.startswith(o + "/")]
        if not inside:
            out.append(t)
    return out


def _build_root(root: str, workdir: str, pkg_root: str, masks, tmp_mb: int) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    os.makedirs(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={tmp_mb}m,mode=1777")
    for src in [p for p in _SYSTEM + _ETC if os.path.lexists(p)] + _python_trees(pkg_root):
        _bind(root, src)
    os.makedirs(root + "/dev/shm")
    for dev in _DEVICES:
        if os.path.exists("/dev/" + dev):
            _bind(root, "/dev/" + dev, ro=False)
    _mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64m,mode=1777")
    for path in masks:
        _mask(root, os.path.realpath(path))
    os.makedirs(root + HOME)  # writable, but nothing written there can be executed or mapped as code
    _mount(workdir, root + HOME, None, MS_BIND)
    _mount(None, root + HOME, None, MS_BIND | MS_REMOUNT | MS_NOEXEC | MS_NOSUID | MS_NODEV | _flags_of(workdir))
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _drop_capabilities() -> None:
    libc = _libc()
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    libc.prctl(_PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("prctl(PR_SET_NO_NEW_PRIVS)")

    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    if libc.capset(ctypes.byref(_Header(0x20080522, 0)), (_Data * 2)()) != 0:
        _fail("capset (drop all capabilities)")


def enter_jail(root: str, workdir: str, pkg_root: str, masks=(), tmp_mb: int = 256) -> None:
    """Isolate the calling (single-threaded) process; on return it runs as PID 1 inside the jail.

    ``root``: an empty directory for the new root; ``workdir``: the host directory that becomes
    :data:`HOME`; ``pkg_root``: the folder holding the student copy of diffedu; ``masks``: host
    paths to hide if they fall inside a bound tree. Raises :class:`JailError` on the first step
    that fails (before any student code has run).
    """
    for name, value in (("root", root), ("workdir", workdir), ("pkg_root", pkg_root)):
        if not (isinstance(value, str) and os.path.isabs(value) and os.path.isdir(value)):
            raise ValueError(f"{name}: expected an existing absolute directory, got {value!r}")
    _enter_namespaces()
    _build_root(root, workdir, pkg_root, masks, tmp_mb)
    os.chroot(root)
    os.chdir(HOME)
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _drop_capabilities()


def set_limits(memory_mb: float, cpu_seconds: float, file_mb: float, nproc: int | None = None) -> None:
    """Resource limits of the calling process (soft = hard, so they cannot be raised again).

    ``memory_mb`` bounds the address space (it includes the ~1 GB of libraries already loaded),
    ``cpu_seconds`` the CPU time, ``file_mb`` the size of any file written; core dumps are off;
    ``nproc`` (inside the jail's user namespace only) the number of processes and threads.
    """
    for name, value in (("memory_mb", memory_mb), ("cpu_seconds", cpu_seconds), ("file_mb", file_mb)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
    limits = [(resource.RLIMIT_AS, int(memory_mb * 2**20)), (resource.RLIMIT_CPU, int(cpu_seconds) + 1),
              (resource.RLIMIT_FSIZE, int(file_mb * 2**20)), (resource.RLIMIT_CORE, 0)]
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, int(nproc)))
    for kind, value in limits:
        soft, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            if sys.platform.startswith("linux"):
                raise
            # elsewhere (macOS) some limits, e.g. RLIMIT_AS, cannot be set: best effort
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write fails with EFBIG instead of killing


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process exits (a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
