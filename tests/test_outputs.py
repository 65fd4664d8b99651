"""Output folders as one set (:class:`refimpl.outputs.OutputSet`) and single output files
(:func:`refimpl.outputs.write_file_atomic`): atomic publishing, locking, fail-fast checks,
symbolic links and special files, signals, and what a killed run leaves."""
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from refimpl import outputs
from refimpl.cli import main
from refimpl.errors import ConfigError
from refimpl.outputs import OutputBusyError, OutputError, OutputSet, Terminated, write_file_atomic
from refimpl.reproduce import OUTPUT_FILES

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
OLD = ["--T0", "50", "--T", "100"]   # the previous set in a folder
NEW = ["--T0", "50", "--T", "200"]   # the run that replaces it (different contents)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert ".tmp" not in err          # messages name the user's path, never a temporary one
    return code, out, err


def siblings(folder):
    """Hidden entries beside ``folder`` that belong to it (temporary folders, lock)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def make_set(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def read_set(folder):
    return {p.name: p.read_text() for p in Path(folder).iterdir()}


@pytest.fixture
def no_training(monkeypatch):
    """Loading or training fails the test: checks of --out must come first."""
    import refimpl.io
    import refimpl.reproduce

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded or trained before the output folder was checked")

    monkeypatch.setattr(refimpl.reproduce, "run_two_stage", forbidden)
    monkeypatch.setattr(refimpl.io, "load_dataset", forbidden)


# ---------------------------------------------------------------- OutputSet in process
def test_files_appear_together_and_replace_the_previous_set(tmp_path):
    out = tmp_path / "out"
    make_set(out, {"config.json": "old", "summary.json": "old", "generalization.json": "old"})
    with OutputSet(out) as s:
        s.write_text("config.json", "new")
        s.write_bytes("stage1.csv", b"new")
        Path(s.path("figure.png")).write_bytes(b"png")
        assert read_set(out) == {"config.json": "old", "summary.json": "old", "generalization.json": "old"}
        assert s.names == ("config.json", "stage1.csv", "figure.png")
    assert read_set(out) == {"config.json": "new", "stage1.csv": "new", "figure.png": "png"}
    assert siblings(out) == []                      # no temporary folder, no lock file
    assert stat.S_IMODE(os.stat(out / "config.json").st_mode) == 0o666 & ~outputs._UMASK


def test_new_folder_and_missing_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with OutputSet(out) as s:
        s.write_text("summary.json", "{}")
    assert read_set(out) == {"summary.json": "{}"} and siblings(out) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_failure_leaves_the_previous_set(tmp_path, exc):
    out = tmp_path / "out"
    make_set(out, {"config.json": "old"})
    with pytest.raises(type(exc)):
        with OutputSet(out) as s:
            s.write_text("config.json", "new")
            raise exc
    assert read_set(out) == {"config.json": "old"} and siblings(out) == []


def test_failure_removes_created_parents(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputSet(tmp_path / "a" / "b" / "out"):
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, reason="SIGTERM handled here")
def test_sigterm_cleans_up_and_restores_the_handler(tmp_path):
    out = tmp_path / "out"
    make_set(out, {"config.json": "old"})
    with pytest.raises(Terminated) as info:
        with OutputSet(out) as s:
            s.write_text("config.json", "new")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)                            # the handler interrupts this
    assert info.value.code == 143
    assert read_set(out) == {"config.json": "old"} and siblings(out) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_second_writer_is_refused_at_once(tmp_path):
    out = tmp_path / "out"
    make_set(out, {"config.json": "old"})
    (tmp_path / "link").symlink_to(out.name)
    with OutputSet(out) as s:
        s.write_text("config.json", "first")
        for spelling in (out, tmp_path / "link", f"{tmp_path}/./out"):
            with pytest.raises(OutputBusyError, match="another refimpl run is writing to"):
                OutputSet(spelling).__enter__()
    assert read_set(out) == {"config.json": "first"}
    with OutputSet(tmp_path / "link") as s:                        # released
        s.write_text("config.json", "second")
    assert read_set(out) == {"config.json": "second"}
    assert issubclass(OutputBusyError, ConfigError)


def test_stale_leftovers_of_killed_runs_are_removed(tmp_path):
    out = tmp_path / "out"
    make_set(out, {"config.json": "old"})
    stale = tmp_path / ".out.tmp-0123456789ab"
    make_set(stale, {"config.json": "half"})
    (tmp_path / ".out.lock").write_text("")
    other = tmp_path / ".outer.tmp-0123456789ab"   # another folder's: left alone
    other.mkdir()
    with OutputSet(out) as s:
        assert not stale.exists()
        s.write_text("config.json", "new")
    assert siblings(out) == [] and other.exists()


def test_previous_set_put_aside_by_a_killed_fallback_is_restored(tmp_path):
    out = tmp_path / "out"
    make_set(tmp_path / ".out.old-0123456789ab", {"config.json": "old"})
    make_set(tmp_path / ".out.tmp-ba9876543210", {"config.json": "new, never published"})
    with pytest.raises(RuntimeError):
        with OutputSet(out):
            assert read_set(out) == {"config.json": "old"}
            raise RuntimeError
    assert read_set(out) == {"config.json": "old"} and siblings(out) == []


def test_fallback_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    make_set(out, {"config.json": "old", "summary.json": "old"})
    with OutputSet(out) as s:
        s.write_text("config.json", "new")
    assert read_set(out) == {"config.json": "new"} and siblings(out) == []


def test_exchange_is_used_on_linux(tmp_path):
    if not sys.platform.startswith("linux") or outputs._renameat2() is None:
        pytest.skip("no renameat2")
    a, b = tmp_path / "a", tmp_path / "b"
    make_set(a, {"x": "a"})
    make_set(b, {"y": "b"})
    assert outputs._exchange(str(a), str(b)) is True
    assert read_set(a) == {"y": "b"} and read_set(b) == {"x": "a"}


def test_symlink_to_a_folder_is_followed(tmp_path):
    real = tmp_path / "real"
    make_set(real, {"config.json": "old"})
    link = tmp_path / "link"
    link.symlink_to(real)
    with OutputSet(link) as s:
        s.write_text("config.json", "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert read_set(real) == {"config.json": "new"} and siblings(real) == [] and siblings(link) == []


@pytest.mark.parametrize("kind", ["file", "dangling", "devnull"])
def test_symlink_to_anything_else_is_refused(tmp_path, kind):
    link = tmp_path / "link"
    if kind == "file":
        (tmp_path / "f").write_text("keep")
        link.symlink_to(tmp_path / "f")
    elif kind == "dangling":
        link.symlink_to(tmp_path / "missing")
    else:
        if not Path("/dev/null").is_char_device():
            pytest.skip("no /dev/null")
        link.symlink_to("/dev/null")
    with pytest.raises(OutputError, match="symbolic link") as info:
        OutputSet(link).__enter__()
    assert str(link) in str(info.value) and ".tmp" not in str(info.value)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["link"] + (["f"] if kind == "file" else []))


def test_folder_with_other_files_is_refused(tmp_path):
    out = tmp_path / "out"
    make_set(out, {"config.json": "old", "notes.txt": "mine"})
    with pytest.raises(OutputError, match="notes.txt"):
        OutputSet(out).__enter__()
    assert read_set(out) == {"config.json": "old", "notes.txt": "mine"} and siblings(out) == []
    (out / "notes.txt").unlink()
    (out / ".figure.png.a1b2c3.tmp").write_text("left by an earlier per-file writer")
    with OutputSet(out) as s:
        s.write_text("config.json", "new")
    assert read_set(out) == {"config.json": "new"}


def test_write_error_names_the_users_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    make_set(out, {"config.json": "old"})

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs, "_write_all", full)
    with pytest.raises(OutputError) as info:
        with OutputSet(out) as s:
            s.write_text("summary.json", "x")
    assert str(info.value) == f"cannot write {out / 'summary.json'}: No space left on device"
    assert info.value.errno == errno.ENOSPC
    assert read_set(out) == {"config.json": "old"} and siblings(out) == []


def test_error_of_a_path_writer_names_the_users_file(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError) as info:
        with OutputSet(out) as s:
            raise OSError(errno.ENOSPC, "No space left on device", s.path("figure.png"))
    assert str(info.value) == f"cannot write {out / 'figure.png'}: No space left on device"
    assert not out.exists() and siblings(out) == []


def test_unrelated_oserror_is_not_rewritten(tmp_path):
    with pytest.raises(FileNotFoundError):
        with OutputSet(tmp_path / "out"):
            open(tmp_path / "missing.json")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- commands: fail before any work
def test_train_into_a_folder_below_a_file_fails_before_training(tmp_path, capsys, no_training):
    (tmp_path / "file").write_text("keep")
    target = tmp_path / "file" / "out"
    code, out, err = run_cli(capsys, "train", str(DATA / "valid_small.json"), "--out", str(target))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert str(target) in err and "is not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs a read-only system folder")
def test_train_into_an_unwritable_location_fails_before_training(capsys, no_training):
    target = "/sys/refimpl-test-out"
    if os.path.lexists(target):
        pytest.skip("path exists")
    try:
        fd = os.open("/sys/.refimpl-probe", os.O_CREAT | os.O_RDONLY)
    except OSError:
        pass
    else:  # writable here after all
        os.close(fd)
        os.unlink("/sys/.refimpl-probe")
        pytest.skip("/sys is writable")
    code, _, err = run_cli(capsys, "train", str(DATA / "valid_small.json"), "--out", target)
    assert code == 2 and err.count("\n") == 1 and f"cannot write {target}: " in err


@pytest.mark.parametrize("command", ["train", "reproduce", "generalize"])
def test_locked_folder_fails_before_training(tmp_path, capsys, no_training, command):
    target = tmp_path / "out"
    argv = [command] + ([] if command == "reproduce" else [str(DATA / "valid_small.json")])
    with OutputSet(target):
        start = time.perf_counter()
        code, out, err = run_cli(capsys, *argv, "--out", str(target))
        assert time.perf_counter() - start < 5
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == f"refimpl {command}: another refimpl run is writing to {target}\n"


def test_train_into_dev_null_fails_and_leaves_it(tmp_path, capsys, no_training):
    if not Path("/dev/null").is_char_device():
        pytest.skip("no /dev/null")
    code, _, err = run_cli(capsys, "train", str(DATA / "valid_small.json"), "--out", "/dev/null")
    assert code == 2 and "not a directory" in err and "character device" in err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_train_into_a_folder_with_other_files_fails_before_training(tmp_path, capsys, no_training):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "train", str(DATA / "valid_small.json"), "--out", str(tmp_path))
    assert code == 2 and "notes.txt" in err and (tmp_path / "notes.txt").read_text() == "mine"


def test_no_space_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["-q", "train", str(DATA / "valid_small.json"), "--out", str(out), "--T0", "5", "--T", "5"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs, "_write_all", full)
    code, _, err = run_cli(capsys, "-q", "train", str(DATA / "valid_small.json"), "--out", str(out),
                           "--T0", "6", "--T", "6")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"refimpl train: cannot write {out}{os.sep}") and err.endswith(": No space left on device\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and siblings(out) == []


# ---------------------------------------------------------------- single files
def test_write_file_atomic_through_a_symlink(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_file_atomic(link, b"new")
    assert link.is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~outputs._UMASK
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "created.json")
    write_file_atomic(dangling, b"made")
    assert dangling.is_symlink() and (tmp_path / "created.json").read_text() == "made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["created.json", "dangling.json", "link.json", "real.json"]


def _special(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        return str(path), stat.S_ISFIFO
    if kind == "dir":
        return str(tmp_path), stat.S_ISDIR
    if not os.path.exists(kind) or not stat.S_ISCHR(os.stat(kind).st_mode):
        pytest.skip(f"no {kind}")
    return kind, stat.S_ISCHR


@pytest.mark.parametrize("kind", ["/dev/null", "/dev/full", "fifo", "dir"])
@pytest.mark.parametrize("via_link", [False, True])
def test_generate_refuses_special_files(tmp_path, capsys, kind, via_link):
    path, is_kind = _special(tmp_path, kind)
    given = path
    if via_link:
        given = str(tmp_path / "link")
        os.symlink(path, given)
    code, out, err = run_cli(capsys, "generate", "-M", "5", "-N", "4", "--out", given)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert given in err and "not a regular file" in err
    assert is_kind(os.stat(path).st_mode)
    if kind == "/dev/full":
        assert "/dev/full is a character device, not a regular file" in err or via_link
    if via_link:
        assert os.path.islink(given)


def test_write_file_atomic_refuses_a_device_even_without_the_cli():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(OutputError, match="^/dev/full is a character device, not a regular file$"):
        write_file_atomic("/dev/full", b"{}")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_write_file_atomic_errors_name_the_file_and_leave_nothing(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs, "_write_all", full)
    with pytest.raises(OutputError) as info:
        write_file_atomic(tmp_path / "d.json", b"{}")
    assert str(info.value) == f"cannot write {tmp_path / 'd.json'}: No space left on device"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="does not exist"):
        write_file_atomic(tmp_path / "nope" / "d.json", b"{}")


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, reason="SIGTERM handled here")
def test_write_file_atomic_cleans_up_on_sigterm(tmp_path, monkeypatch):
    (tmp_path / "d.json").write_text("old")

    def terminated(fd, data):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(outputs, "_write_all", terminated)
    with pytest.raises(Terminated):
        write_file_atomic(tmp_path / "d.json", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"] and (tmp_path / "d.json").read_text() == "old"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ---------------------------------------------------------------- killed and concurrent runs
def _env(delay=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("REFIMPL_TEST_WRITE_DELAY", None)
    if delay is not None:
        env["REFIMPL_TEST_WRITE_DELAY"] = str(delay)
    return env


def _default_signals():
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # a background job may have inherited them ignored
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _train(ds, target, settings, delay=None):
    return subprocess.Popen([sys.executable, "-m", "refimpl", "-q", "train", str(ds), "--out", str(target),
                             *settings], env=_env(delay), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_signals)


def _signature(folder):
    """The files of a set, summary.json without its run time (the one field that varies)."""
    sig = {}
    for p in Path(folder).iterdir():
        data = p.read_bytes()
        if p.name == "summary.json":
            summary = json.loads(data)
            summary.pop("runtime_seconds")
            data = json.dumps(summary, sort_keys=True).encode()
        sig[p.name] = data
    return sig


def _temporaries(target):
    return set(target.parent.glob(f".{target.name}.tmp-*"))


def _wait_for_write_phase(proc, target, before=(), timeout=120):
    """Wait until the run's temporary folder (not one of ``before``, left by killed runs)
    holds its first file: training is over and the files are being written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tmp in _temporaries(target) - set(before):
            try:
                if any(tmp.iterdir()):
                    return
            except OSError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its write phase: {proc.stderr.read()}")
        time.sleep(0.001)
    raise AssertionError("no write phase")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """A dataset and the complete sets of the previous (OLD) and the new (NEW) settings."""
    base = tmp_path_factory.mktemp("kill")
    ds = base / "ds.json"
    assert main(["-q", "generate", "-M", "8", "-N", "40", "--seed", "1", "--out", str(ds)]) == 0
    refs = {}
    for label, settings in (("previous", OLD), ("new", NEW)):
        proc = _train(ds, base / label, settings)
        assert proc.wait() == 0, proc.stderr.read()
        refs[label] = _signature(base / label)
        assert sorted(refs[label]) == sorted(OUTPUT_FILES)
    assert refs["previous"]["stage2.csv"] != refs["new"]["stage2.csv"]
    assert refs["previous"]["config.json"] != refs["new"]["config.json"]
    return base, ds, refs


def _fresh_target(base, name):
    target = base / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base / "previous", target)
    return target


def _outcome(target, refs):
    sig = _signature(target)
    for label, ref in refs.items():
        if sig == ref:
            return label
    raise AssertionError(f"{target} holds a mix of runs: {sorted(sig)}")


@pytest.mark.slow
def test_sigkill_in_the_write_phase_leaves_one_complete_set(references):
    """SIGKILL at random moments of the write phase (files written, fsync, rename, removal of
    the old contents): the folder holds the complete previous set or the complete new one."""
    base, ds, refs = references
    rng = random.Random(20240611)
    delays = [0.02, 0.05, 0.1, 0.15, 0.2]
    outcomes, stale = Counter(), 0
    for trial in range(12):
        target = _fresh_target(base, "target")
        delay = delays[trial % len(delays)]
        before = _temporaries(target)
        proc = _train(ds, target, NEW, delay)
        _wait_for_write_phase(proc, target, before)
        time.sleep(rng.uniform(0.0, 9 * delay))  # 5 files, fsync, 2 pauses around publishing: 7 delays and more
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcomes[_outcome(target, refs)] += 1
        stale += any(".tmp-" in s for s in siblings(target))
    print(f"SIGKILL outcomes: {dict(outcomes)}; stale temporary folders left: {stale}")
    assert sum(outcomes.values()) == 12 and outcomes["previous"] >= 1
    proc = _train(ds, target, OLD)           # a later run removes what the killed ones left
    assert proc.wait() == 0, proc.stderr.read()
    assert _outcome(target, refs) == "previous" and siblings(target) == []


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_sigint_leave_no_temporary_folder(references, sig, code, word):
    base, ds, refs = references
    for delay, wait in [(0.05, None), (0.05, 0.0), (0.08, 0.2)]:
        target = _fresh_target(base, f"target-{word}")
        proc = _train(ds, target, NEW, delay)
        if wait is None:                      # during loading or training
            deadline = time.monotonic() + 60
            while not list(target.parent.glob(f".{target.name}.tmp-*")) and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            _wait_for_write_phase(proc, target)
            time.sleep(wait)
        proc.send_signal(sig)
        assert proc.wait() == code
        err = proc.stderr.read()
        assert err == f"refimpl train: {word}\n"
        assert siblings(target) == []
        assert _outcome(target, refs) == "previous" or wait is not None   # a late signal: after publishing


_HOLDER = """
import sys
from refimpl.outputs import OutputSet
with OutputSet(sys.argv[1]) as out:
    out.write_text("config.json", "held")
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_two_concurrent_runs(references):
    """A run holding the folder (an open OutputSet in another process): a second run into
    the same folder is refused at once with exit 2 and one line; the first one is undisturbed."""
    base, ds, refs = references
    target = _fresh_target(base, "target-busy")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)], env=_env(), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "ready\n", holder.stderr.read()
        second = subprocess.run([sys.executable, "-m", "refimpl", "-q", "train", str(ds), "--out", str(target),
                                 *NEW], env=_env(), capture_output=True, text=True)
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr == f"refimpl train: another refimpl run is writing to {target}\n"
        assert _outcome(target, refs) == "previous"
        assert holder.poll() is None
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert read_set(target) == {"config.json": "held"} and siblings(target) == []
