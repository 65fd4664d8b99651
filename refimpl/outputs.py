"""Output folders published as one set, and single output files, written atomically.

A run of ``refimpl reproduce``, ``train`` or ``generalize`` writes several files
that belong together (a figure, trajectories, a summary, the configuration).
:class:`OutputSet` makes them appear together: the files are written into a
hidden sibling folder ``<parent>/.<name>.tmp-<random>`` and, when the run has
finished, that folder replaces the output folder in one rename. A reader (or a
run killed at any moment) sees the complete previous set or the complete new
one, never a mix.

Guarantees and rules (also in ``docs/reproduce.md``, "Output folders"):

* **Fail fast.** Entering the set resolves the folder, takes the lock and
  creates the temporary sibling: an output path that is a file, a device, a
  locked folder or an unwritable location fails there, before any work, with
  one line naming the user's path.
* **One writer per folder.** An exclusive, non-blocking ``flock`` on
  ``<parent>/.<name>.lock`` (removed when the run ends); a second run into the
  same folder gets :class:`OutputBusyError` at once.
* **Whole-folder replacement.** The folder is replaced as a whole, so files of
  the previous set that the new run does not write disappear. To protect
  unrelated data, an existing folder is replaced only when it is empty or holds
  nothing but file names refimpl writes (:data:`RUN_OUTPUT_NAMES`); a mount point
  is refused (it cannot be renamed).
* **Publishing.** On Linux ``renameat2(RENAME_EXCHANGE)`` swaps the new folder
  with the existing one in one step, then the old contents are removed. Where it
  is unavailable (other systems, or a filesystem that answers ``EINVAL``), the
  old folder is renamed aside to ``.<name>.old-<random>`` and the new one renamed
  in: between these two renames (microseconds, with SIGINT and SIGTERM blocked)
  the folder is missing; a run killed by SIGKILL exactly there leaves the
  previous set in ``.<name>.old-*``, and the next run on the folder moves it back.
* **Signals.** While a set (or :func:`write_file_atomic`) is open in the main
  thread, SIGTERM raises :class:`Terminated` (a ``SystemExit`` with code 143)
  unless the program installed its own handler or ignores SIGTERM, so the
  cleanup runs as for an exception or KeyboardInterrupt: the temporary folder is
  removed, the lock released, the previous set left as it was.
* **SIGKILL** cannot be caught: it can leave ``.<name>.tmp-*`` (and a lock file,
  unlocked) beside the folder. The next :class:`OutputSet` on the same folder
  removes them while holding the lock, so no running writer loses its folder.
* **Errors** (:class:`OutputError`, a :class:`~refimpl.errors.ConfigError`) are one
  line naming the user's path (the folder or the file, never a temporary name)
  and the system's reason, e.g. ``cannot write out/summary.json: No space left on
  device``.

:func:`write_file_atomic` is the single-file counterpart (``generate --out FILE``,
:func:`refimpl.io.save_dataset`): it writes through symbolic links, refuses
devices, FIFOs, sockets and folders, and replaces the file by a rename.

Test-only: the environment variable ``REFIMPL_TEST_WRITE_DELAY`` (seconds) makes
an :class:`OutputSet` sleep after each file it writes and around publishing, so
tests can interrupt the write phase at chosen moments. It is not a user setting.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time

from .errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: no locking
    fcntl = None

__all__ = ["OutputError", "OutputBusyError", "Terminated", "OutputSet", "open_output_set",
           "write_file_atomic", "check_file_target", "RUN_OUTPUT_NAMES"]

RUN_OUTPUT_NAMES = frozenset({"figure.png", "stage1.csv", "stage2.csv", "summary.json", "config.json",
                              "generalization.png", "generalization.json"})
"""File names refimpl's commands write into an output folder. An existing folder
holding only these (or nothing) may be replaced by a new set."""

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_TEST_DELAY_ENV = "REFIMPL_TEST_WRITE_DELAY"


class OutputError(ConfigError):
    """An output folder or file cannot be written (one line naming the user's path).

    Attributes
    ----------
    path : str or None
        The output path as the user gave it.
    errno : int or None
        The system error number when the cause is an ``OSError``.
    strerror : str or None
        The system's description of that error.
    """

    def __init__(self, message, *, path=None, errno=None, strerror=None):
        super().__init__(" ".join(str(message).split()))  # always one line
        self.path = path
        self.errno = errno
        self.strerror = strerror


class OutputBusyError(OutputError):
    """Another process holds the lock of the output folder (a concurrent refimpl run)."""


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM while an output set or file is open (exit code 143)."""


def _reason(exc):
    return exc.strerror or type(exc).__name__


def _oserror(action, user_path, exc):
    return OutputError(f"cannot {action} {user_path}: {_reason(exc)}", path=str(user_path),
                       errno=getattr(exc, "errno", None), strerror=getattr(exc, "strerror", None))


def _kind(mode):
    """A short description of the file type in ``mode``."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


def _write_all(fd, data):
    """Write every byte of ``data`` to the file descriptor ``fd``."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_path(path, *, directory=False):
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_quietly(path):
    """fsync a folder (makes a rename durable); some filesystems refuse, which is not an error."""
    try:
        _fsync_path(path, directory=True)
    except OSError:
        pass


def _remove(path):
    """Remove a file or a folder tree; errors are ignored (best effort)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _test_delay():
    value = os.environ.get(_TEST_DELAY_ENV)
    if value:
        try:
            seconds = float(value)
        except ValueError:
            return
        if seconds > 0:
            time.sleep(seconds)


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, frame):
    raise Terminated(128 + signum)


class _SigtermGuard:
    """Turn SIGTERM into :class:`Terminated` in the main thread while active.

    Installed only when SIGTERM has its default action (a handler the program set,
    or an ignored SIGTERM, is left alone); the previous handler is restored on stop.
    """

    def __init__(self):
        self._previous = None
        self._installed = False

    def start(self):
        if _in_main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
            self._installed = True
        return self

    def stop(self):
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGTERM, self._previous)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


@contextlib.contextmanager
def _signals_blocked():
    """Block SIGINT and SIGTERM in the main thread for a short critical section
    (they are delivered when it ends)."""
    if not (_in_main_thread() and hasattr(signal, "pthread_sigmask")):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_renameat2_fn = None


def _renameat2():
    """libc's ``renameat2`` through ctypes, or None where it does not exist."""
    global _renameat2_fn
    if _renameat2_fn is None:
        fn = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError, ImportError):
                fn = False
        _renameat2_fn = fn
    return _renameat2_fn or None


def _exchange(a, b):
    """Swap the folders ``a`` and ``b`` atomically. Returns False where the system or
    filesystem cannot (the caller falls back); raises OSError for other failures."""
    fn = _renameat2()
    if fn is None:
        return False
    import ctypes
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
        return False
    raise OSError(err, os.strerror(err), b)


def _random_sibling(parent, name, kind):
    return os.path.join(parent, f".{name}.{kind}-{os.urandom(6).hex()}")


def _legacy_temp_name(entry, names):
    """A temporary file an earlier per-file writer may have left: ``.<name>.<random>.tmp``."""
    return entry.startswith(".") and entry.endswith(".tmp") and any(entry.startswith(f".{n}.") for n in names)


class OutputSet:
    """One run's output folder, written as a set and published atomically.

    Use as a context manager; entering does every check (so call it before any
    training) and exiting without an exception publishes the files::

        with OutputSet("train_out") as out:
            result = train(...)                    # KeyboardInterrupt / errors: nothing published
            out.write_text("summary.json", text)
            fig.savefig(out.path("figure.png"))    # writers that need a file name

    Parameters
    ----------
    path : str or os.PathLike
        The output folder. A symbolic link to a folder is followed (the set goes
        where it points and the link is kept); a link to anything else is refused.
        Missing parent folders are created (and removed again if the run fails).
    replaceable : iterable of str or None
        File names an existing folder may hold for it to be replaced
        (default :data:`RUN_OUTPUT_NAMES`); None allows replacing any folder.

    Raises
    ------
    OutputError
        On entering: the path exists and is not a folder, is a mount point, holds
        other files, or its location is not writable; on writing or publishing: the
        system's error. The message names ``path``, never a temporary name.
    OutputBusyError
        On entering: another process is writing to the same folder.

    Notes
    -----
    The files are written to ``<parent>/.<name>.tmp-<random>`` and fsynced; on
    success that folder is swapped with ``path`` (``renameat2(RENAME_EXCHANGE)``
    on Linux, a plain rename when ``path`` does not exist) and the old contents
    are removed. On an exception, KeyboardInterrupt, SystemExit or SIGTERM the
    temporary folder is removed and ``path`` is left as it was. An instance is
    entered once.
    """

    def __init__(self, path, *, replaceable=RUN_OUTPUT_NAMES):
        self.user_path = os.fspath(path)
        self.replaceable = None if replaceable is None else frozenset(replaceable)
        self.target = None           # resolved absolute folder
        self._tmp = None             # the temporary sibling folder
        self._lock_fd = None
        self._lock_path = None
        self._created = []           # parent folders this set created
        self._names = []
        self._aside = None           # previous contents after publishing (to remove)
        self._guard = _SigtermGuard()
        self._state = "new"

    def __repr__(self):
        return f"OutputSet({self.user_path!r}, state={self._state!r})"

    # ------------------------------------------------------------ entering
    def __enter__(self):
        if self._state != "new":
            raise RuntimeError("an OutputSet can be entered only once")
        self._state = "opening"
        self._guard.start()
        try:
            with _signals_blocked():   # a signal is handled once the lock and the folder are recorded
                self._open()
        except BaseException:
            self._abort()
            raise
        self._state = "open"
        return self

    def _resolve(self):
        user = self.user_path
        path = os.path.abspath(user)
        if os.path.islink(path):
            real = os.path.realpath(path)
            try:
                st = os.stat(real)
            except FileNotFoundError:
                raise OutputError(f"output folder {user!r} is a symbolic link to {real}, which does not "
                                  "exist; a link must point to a folder", path=user) from None
            except OSError as exc:
                raise _oserror("use output folder", user, exc) from None
            if not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"output folder {user!r} is a symbolic link to {real}, a {_kind(st.st_mode)}, "
                                  "not a directory", path=user)
            return real
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):   # missing; a file among the parents is named later
            return os.path.realpath(path)
        except OSError as exc:
            raise _oserror("use output folder", user, exc) from None
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"output folder {user!r} exists and is not a directory "
                              f"(it is a {_kind(st.st_mode)})", path=user)
        return os.path.realpath(path)

    def _make_parents(self, parent):
        missing = []
        p = parent
        while not os.path.lexists(p):
            missing.append(p)
            up = os.path.dirname(p)
            if up == p:
                break
            p = up
        if not missing:
            if not os.path.isdir(parent):
                raise OutputError(f"cannot create output folder {self.user_path}: {parent} is not a directory",
                                  path=self.user_path)
            return
        if not os.path.isdir(p):
            raise OutputError(f"cannot create output folder {self.user_path}: {p} is not a directory",
                              path=self.user_path)
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _oserror("create output folder", self.user_path, exc) from None
            self._created.append(d)

    def _lock(self, parent, name):
        if fcntl is None:  # pragma: no cover
            return
        path = os.path.join(parent, f".{name}.lock")
        while True:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                raise _oserror("write", self.user_path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError(f"another refimpl run is writing to {self.user_path}",
                                      path=self.user_path) from None
            except OSError as exc:
                os.close(fd)
                raise _oserror("lock output folder", self.user_path, exc) from None
            try:  # the file may have been removed by the holder that just released it: retry
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd, self._lock_path = fd, path
                return
            os.close(fd)

    def _clean_stale(self, parent, name):
        """Remove what killed runs on this folder left (the lock is held, so none is running)."""
        pattern = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-([0-9a-f]{{12}})")
        try:
            entries = os.listdir(parent)
        except OSError:
            return
        def age(entry):
            try:
                return -os.lstat(os.path.join(parent, entry)).st_mtime
            except OSError:
                return 0.0

        for entry in sorted((e for e in entries if pattern.fullmatch(e)), key=age):  # newest first
            full = os.path.join(parent, entry)
            if ".old-" in entry and not os.path.lexists(self.target):
                try:  # killed between the two renames of the fallback: put the previous set back
                    os.rename(full, self.target)
                    continue
                except OSError:
                    pass
            _remove(full)

    def _check_replaceable(self):
        try:
            st = os.stat(self.target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _oserror("use output folder", self.user_path, exc) from None
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"output folder {self.user_path!r} exists and is not a directory "
                              f"(it is a {_kind(st.st_mode)})", path=self.user_path)
        if self.replaceable is None:
            return
        try:
            entries = os.listdir(self.target)
        except OSError as exc:
            raise _oserror("read output folder", self.user_path, exc) from None
        foreign = []
        for entry in entries:
            full = os.path.join(self.target, entry)
            own = (entry in self.replaceable or _legacy_temp_name(entry, self.replaceable)) and \
                stat.S_ISREG(os.lstat(full).st_mode)
            if not own:
                foreign.append(entry)
        if foreign:
            shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputError(f"output folder {self.user_path} holds files refimpl did not write ({shown}); "
                              "a run replaces its folder as a whole: choose a new or empty folder",
                              path=self.user_path)

    def _open(self):
        self.target = self._resolve()
        parent, name = os.path.split(self.target)
        if not name or parent == self.target:
            raise OutputError(f"cannot use {self.user_path} as an output folder", path=self.user_path)
        if os.path.isdir(self.target) and os.path.ismount(self.target):
            raise OutputError(f"output folder {self.user_path} is a mount point, which cannot be replaced; "
                              "write to a folder inside it", path=self.user_path)
        self._make_parents(parent)
        self._lock(parent, name)
        self._clean_stale(parent, name)
        self._check_replaceable()
        while True:  # the temporary sibling; creating it is also the writability check
            tmp = _random_sibling(parent, name, "tmp")
            try:
                os.mkdir(tmp, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _oserror("write", self.user_path, exc) from None
            self._tmp = tmp
            return

    # ------------------------------------------------------------ writing
    def _check_name(self, name):
        if self._state != "open":
            raise RuntimeError(f"{self!r} is not open")
        name = os.fspath(name)
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or \
                (os.altsep and os.altsep in name) or os.sep in name:
            raise ValueError(f"an output set holds plain file names, got {name!r}")
        return name

    def _user_file(self, name):
        return os.path.join(self.user_path, name)

    def write_bytes(self, name, data):
        """Write ``data`` (bytes) as the file ``name`` of the set.

        Parameters
        ----------
        name : str
            A plain file name (no folder part).
        data : bytes-like

        Raises
        ------
        OutputError
            ``cannot write <folder>/<name>: <reason>``.
        """
        name = self._check_name(name)
        full = os.path.join(self._tmp, name)
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _oserror("write", self._user_file(name), exc) from exc
        if name not in self._names:
            self._names.append(name)
        _test_delay()

    def write_text(self, name, text, encoding="utf-8"):
        """Write ``text`` as the file ``name`` of the set (UTF-8 unless ``encoding``)."""
        self.write_bytes(name, text.encode(encoding))

    def path(self, name):
        """The file name to give a writer that needs one (e.g. ``Figure.savefig``) for ``name``.

        The file is published with the others. An ``OSError`` of that writer naming
        the returned path is reported as :class:`OutputError` naming ``<folder>/<name>``.
        """
        name = self._check_name(name)
        if name not in self._names:
            self._names.append(name)
        return os.path.join(self._tmp, name)

    @property
    def names(self):
        """The file names written so far, in the order first written (tuple of str)."""
        return tuple(self._names)

    # ------------------------------------------------------------ leaving
    def _translate(self, exc):
        """An OSError about a temporary file as OutputError naming the user's path (else None)."""
        filename = getattr(exc, "filename", None)
        if self._tmp is None or not isinstance(filename, str):
            return None
        if filename == self._tmp or filename.startswith(self._tmp + os.sep):
            rest = os.path.relpath(filename, self._tmp)
            return _oserror("write", self.user_path if rest == "." else self._user_file(rest), exc)
        return None

    def _publish(self):
        tmp, target = self._tmp, self.target
        parent = os.path.dirname(target)
        try:
            for entry in os.listdir(tmp):
                _fsync_path(os.path.join(tmp, entry))
            try:
                mode = stat.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                mode = 0o777 & ~_UMASK
            os.chmod(tmp, mode)
            _fsync_path(tmp, directory=True)
        except OSError as exc:
            raise self._translate(exc) or _oserror("write", self.user_path, exc) from exc
        _test_delay()
        with _signals_blocked():
            try:
                if not os.path.lexists(target):
                    os.rename(tmp, target)
                elif _exchange(tmp, target):
                    self._aside = tmp                    # now holds the previous contents
                else:
                    aside = _random_sibling(parent, os.path.basename(target), "old")
                    os.rename(target, aside)
                    try:
                        os.rename(tmp, target)
                    except BaseException:
                        os.rename(aside, target)
                        raise
                    self._aside = aside
            except OSError as exc:
                raise _oserror("replace output folder", self.user_path, exc) from exc
            self._state = "published"
        _fsync_dir_quietly(parent)
        _test_delay()

    def _release(self):
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                os.unlink(self._lock_path)               # while still locked, so no one locks a dead file
            except OSError:
                pass
            os.close(fd)

    def _abort(self):
        """Undo an unpublished set (temporary folder, created parents) or finish a published one
        interrupted after its rename (previous contents); release the lock and the SIGTERM handler.
        A second Ctrl-C or SIGTERM waits until this is done."""
        try:
            with _signals_blocked():
                if self._state == "published":
                    if self._aside is not None:
                        _remove(self._aside)
                elif self._tmp is not None:
                    _remove(self._tmp)
                self._release()
                if self._state != "published":
                    for d in reversed(self._created):
                        try:
                            os.rmdir(d)
                        except OSError:
                            break
        finally:
            if self._state != "published":
                self._state = "aborted"
            self._guard.stop()

    def __exit__(self, exc_type, exc, tb):
        if self._state != "open":
            return False
        if exc_type is None:
            try:
                self._publish()
            except BaseException as err:
                self._abort()
                if isinstance(err, OSError):
                    raise self._translate(err) or _oserror("write", self.user_path, err) from err
                raise
            try:
                with _signals_blocked():
                    if self._aside is not None:
                        _remove(self._aside)
                    self._release()
            finally:
                self._guard.stop()
            return False
        self._abort()
        if isinstance(exc, OSError):
            translated = self._translate(exc)
            if translated is not None:
                raise translated from exc
        return False


def open_output_set(target, **kwargs):
    """A context manager giving an open :class:`OutputSet` for ``target``.

    ``target`` may be a path (a new set is opened, and published on leaving) or an
    :class:`OutputSet` already entered by the caller (used as is; its owner publishes
    it). This lets a function write its files into a set its caller opened early.
    """
    if isinstance(target, OutputSet):
        return contextlib.nullcontext(target)
    return OutputSet(target, **kwargs)


# ---------------------------------------------------------------- single files
def check_file_target(path):
    """Resolve the destination of a single output file, refusing what cannot be replaced.

    Parameters
    ----------
    path : str or os.PathLike
        The output file. A symbolic link is written through (its target, created if
        the link dangles, is replaced and the link kept).

    Returns
    -------
    str
        The absolute path of the file that will be replaced.

    Raises
    ------
    OutputError
        The path (or its link target) is a directory, a device, a FIFO or a socket
        ("/dev/full is a character device, not a regular file"), or its folder does
        not exist.
    """
    user = os.fspath(path)
    full = os.path.abspath(user)
    real = os.path.realpath(full) if os.path.islink(full) else full
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _oserror("write", user, exc) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        if real != full:
            raise OutputError(f"{user} is a symbolic link to {real}, a {kind}, not a regular file", path=user)
        raise OutputError(f"{user} is a {kind}, not a regular file", path=user)
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {user}: folder {folder} does not exist", path=user)
    return real


def write_file_atomic(path, data):
    """Replace the file ``path`` by ``data`` atomically (a reader sees the old or the new file).

    Parameters
    ----------
    path : str or os.PathLike
        See :func:`check_file_target` (symbolic links are written through; devices,
        FIFOs, sockets and folders are refused).
    data : bytes-like

    Raises
    ------
    OutputError
        Refused destinations, and any system error, as one line naming ``path``.

    Notes
    -----
    The data goes to a temporary file in the same folder (mode ``0o666 & ~umask``),
    is fsynced and renamed over the destination. The temporary file is removed on
    any exception, KeyboardInterrupt or SIGTERM; only SIGKILL can leave a hidden
    ``.<name>.<random>.tmp`` beside the file.
    """
    user = os.fspath(path)
    with _SigtermGuard():
        real = check_file_target(user)
        folder, name = os.path.split(real)
        tmp = None
        try:
            with _signals_blocked():             # the temporary name is recorded before a signal is handled
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            try:
                _write_all(fd, data)
                os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600
                os.fsync(fd)
            finally:
                os.close(fd)
            with _signals_blocked():
                check_file_target(user)          # still a regular file (or absent) just before the rename
                os.replace(tmp, real)
                tmp = None
            _fsync_dir_quietly(folder)
        except OSError as exc:
            raise _oserror("write", user, exc) from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
