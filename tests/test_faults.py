"""Fault injection: what users do to runs (several at once, typos, kill -9, damaged files,
unwritable folders), tried through the real console scripts in subprocesses.

Every test asserts what the README promises: bad input is one line ``prog: error: ...`` and
exit status 2 (no traceback), nothing half-written is left, and no earlier result changes
(each hashes the files before and after).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nstyle import _rundir, checkpoint, images

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = ["debug=tiny", "snapshot_every=0"]
TRAIN_DEBUG = ["train/experiment=debug", "style=builtin:chelsea"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every subprocess: one persistent compilation cache for the module."""
    e = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "XLA_FLAGS")}
    # `python -m experiments.X` runs from a checkout: the tests start it elsewhere, with the checkout on the path
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    e.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jaxcache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return e


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee"):
        images.save_image(d / f"{name}.png", images.load_image(f"builtin:{name}", max_side=64))
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory, photos, env):
    """A finished 20-step debug training run (checkpoints at 10 and 20), to copy and resume."""
    d = tmp_path_factory.mktemp("trained") / "run"
    p = run("nstyle-train", *TRAIN_DEBUG, f"data={photos}", "steps=20", f"hydra.run.dir={d}", env=env)
    assert p.returncode == 0, p.stderr
    return d


def run(script, *args, env, cwd=None, timeout=600, prefix=()):
    return subprocess.run(
        [*prefix, str(BIN / script), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def start(script, *args, env, cwd=None):
    return subprocess.Popen(
        [str(BIN / script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def one_line_error(p, prog, code=2):
    """The process ended with ``code`` and said exactly one line ``prog: error: ...``; returns it."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert "Traceback" not in p.stderr, p.stderr
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), p.stderr
    return err[0]


def tree(d: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``d`` (hidden ones too)."""
    out = {}
    for root, _dirs, files in os.walk(d):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def wait_for_lock(d: Path, proc, timeout=120):
    """Until ``proc`` holds the run lock of ``d`` (a flock on d/.nstyle.lock)."""
    import fcntl

    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        lock = d / _rundir.LOCK_FILE
        if lock.exists():
            with open(lock) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except OSError:
                    return
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


# Runs the rest of its command line without the capabilities that let root write anywhere
# (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; dropped from the bounding set, then exec), so file
# permissions apply to it as to any user: the tests run as root.
DROP_DAC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        sys.exit(97)
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture
def unprivileged():
    """A command prefix that runs a program as a user that permissions apply to."""
    if os.geteuid() != 0:
        return ()
    prefix = (sys.executable, "-c", DROP_DAC)
    if subprocess.run([*prefix, "/bin/true"]).returncode != 0:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
    return prefix


# ----------------------------------------------------------------------------- run directories


class Holder:
    """Another process holding the run lock of a directory, as a running run does."""

    def __init__(self, d: Path):
        script = f"from nstyle import _rundir; _rundir.acquire({str(d)!r}); print('locked', flush=True); input()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ
        )
        assert self.proc.stdout.readline().strip() == "locked"

    def __enter__(self):
        return self.proc

    def __exit__(self, *exc):
        self.proc.communicate("\n", timeout=60)


def test_a_second_run_on_a_locked_directory_stops_and_changes_nothing(tmp_path, trained, photos, env):
    d = tmp_path / "run"
    assert run("nstyle-stylize", *TINY, f"hydra.run.dir={d}", env=env).returncode == 0
    t = _copy(trained, tmp_path / "train")
    before, before_t = tree(d), tree(t)
    with Holder(d) as holder, Holder(t) as holder_t:
        # overwrite=true would replace the result, steps=30 would resume the training: both refused
        p = run("nstyle-stylize", *TINY, "overwrite=true", f"hydra.run.dir={d}", env=env)
        assert f"is in use by another run (pid {holder.pid})" in one_line_error(p, "nstyle-stylize")
        p = run("nstyle-train", *TRAIN_DEBUG, f"data={photos}", "steps=30", f"hydra.run.dir={t}", env=env)
        assert f"is in use by another run (pid {holder_t.pid})" in one_line_error(p, "nstyle-train")
    assert tree(d) == before and tree(t) == before_t  # not a byte: no .hydra, no log, nothing


def test_two_runs_started_on_one_directory(tmp_path, env):
    d = tmp_path / "run"
    first = start("nstyle-stylize", *TINY, "steps=40", "seed=1", f"hydra.run.dir={d}", env=env)
    wait_for_lock(d, first)
    second = run("nstyle-stylize", *TINY, "seed=2", f"hydra.run.dir={d}", env=env)
    err = one_line_error(second, "nstyle-stylize")
    assert f"is in use by another run (pid {first.pid})" in err
    _, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1
    overrides = (d / ".hydra" / "overrides.yaml").read_text()  # the records and the result are the first run's
    assert "seed=1" in overrides and "seed=2" not in overrides
    assert json.loads((d / "metrics.json").read_text())["settings"]["seed"] == 1


def test_runs_started_together_get_their_own_default_directories(tmp_path, env):
    procs = [start("nstyle-stylize", *TINY, f"seed={s}", env=env, cwd=tmp_path) for s in (1, 2, 3)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    dirs = sorted((tmp_path / "outputs" / "stylize").iterdir())
    assert len(dirs) == 3
    seeds = set()
    for d in dirs:  # each directory's records and result belong to one run
        seed = json.loads((d / "metrics.json").read_text())["settings"]["seed"]
        assert f"seed={seed}" in (d / ".hydra" / "overrides.yaml").read_text()
        seeds.add(seed)
    assert seeds == {1, 2, 3}


def _make_unique(path, n, out):
    out.extend([str(_rundir.unique_dir(path)) for _ in range(n)])


def test_unique_dir_is_unique_across_threads_and_processes(tmp_path):
    name = tmp_path / "outputs" / "2024-01-01_00-00-00"
    made: list[str] = []
    threads = [threading.Thread(target=_make_unique, args=(name, 5, made)) for _ in range(4)]
    script = f"from nstyle import _rundir\nfor _ in range(5): print(_rundir.unique_dir({str(name)!r}))"
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ)
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        made += p.communicate()[0].split()
    assert len(made) == 35 and len(set(made)) == 35
    assert {Path(m).name for m in made} == {name.name} | {f"{name.name}_{i}" for i in range(2, 36)}


def test_lock_is_reentrant_in_one_thread_and_refused_in_another(tmp_path):
    d = tmp_path / "run"
    with _rundir.hold(d), _rundir.hold(d):
        errors = []

        def other():
            try:
                _rundir.acquire(d)
            except _rundir.RunDirError as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and "in use by another run in this process" in errors[0]
    with _rundir.hold(d):  # released: free again
        pass


def test_two_trainings_started_on_one_directory(tmp_path, photos, env):
    d = tmp_path / "train"
    first = start("nstyle-train", *TRAIN_DEBUG, f"data={photos}", f"hydra.run.dir={d}", env=env)
    wait_for_lock(d, first)
    second = run("nstyle-train", *TRAIN_DEBUG, f"data={photos}", "seed=3", f"hydra.run.dir={d}", env=env)
    assert "is in use by another run" in one_line_error(second, "nstyle-train")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert "seed=3" not in (d / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((d / "metrics.json").read_text())["config"]["seed"] == 0


@pytest.mark.parametrize(
    "form, name",
    [
        ("++hydra.run.dir={}", "run"),
        ("++hydra.run.dir='{}'", "résultat, été"),  # non-ASCII, a space and a comma need quoting
        ("hydra.run.dir='{}'", "résultat, été"),
        ('hydra.run.dir="{}"', "résultat, été"),
    ],
)
def test_never_overwrite_holds_for_every_spelling_of_the_run_dir(tmp_path, env, form, name):
    d = tmp_path / name
    first = run("nstyle-stylize", *TINY, f"hydra.run.dir='{d}'", env=env)
    assert first.returncode == 0, first.stderr
    before = tree(d)
    p = run("nstyle-stylize", *TINY, "seed=7", form.format(d), env=env)
    assert "already holds a result" in one_line_error(p, "nstyle-stylize")
    assert tree(d) == before  # .hydra/config.yaml included


def test_overwrite_true_replaces_the_result_and_its_snapshots(tmp_path, env):
    d = tmp_path / "run"
    assert run("nstyle-stylize", "debug=tiny", "snapshot_every=5", f"hydra.run.dir={d}", env=env).returncode == 0
    assert sorted(p.name for p in (d / "snapshots").iterdir()) == ["step_0005.png", "step_0010.png"]
    p = run("nstyle-stylize", *TINY, "steps=4", "seed=3", "overwrite=true", f"hydra.run.dir={d}", env=env)
    assert p.returncode == 0, p.stderr
    assert list((d / "snapshots").iterdir()) == []  # the old run's snapshots went with its result
    m = json.loads((d / "metrics.json").read_text())
    assert m["iterations"] == 4 and m["settings"]["seed"] == 3
    assert "seed=3" in (d / ".hydra" / "overrides.yaml").read_text()


def test_refused_runs_create_nothing(tmp_path, env):
    # a key added with + that the schema does not have: refused before Hydra creates anything
    p = run("nstyle-stylize", *TINY, "+stylse=x", env=env, cwd=tmp_path)
    assert "unknown key 'stylse'" in one_line_error(p, "nstyle-stylize")
    p = run("nstyle-stylize", *TINY, "++loss.alpah=1", f"hydra.run.dir={tmp_path / 'x'}", env=env, cwd=tmp_path)
    assert "unknown key 'loss.alpah'; valid keys here: loss.alpha" in one_line_error(p, "nstyle-stylize")
    # a run that fails on its input leaves no directory holding only .hydra/ and an empty log
    p = run("nstyle-stylize", *TINY, "style=missing.png", env=env, cwd=tmp_path)
    assert "missing.png: no such file" in one_line_error(p, "nstyle-stylize")
    p = run("nstyle-stylize", *TINY, "style=missing.png", f"hydra.run.dir={tmp_path / 'y' / 'z'}", env=env)
    one_line_error(p, "nstyle-stylize")
    assert sorted(os.listdir(tmp_path)) == []


# ----------------------------------------------------------------------------- resume and checkpoints


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "change, named",
    [
        (["style=builtin:astronaut"], "style_sha256="),
        (["style=[builtin:chelsea,builtin:coffee]"], "style_sha256="),  # one style then, two now
        (["loss.style_weight=5"], "loss.style_weight=1.0 there, 5.0 now"),
        (["optim.lr=1e-4"], "optim.lr="),
        (["net.upsample=transpose"], "net.upsample=nearest there, transpose now"),
    ],
)
def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path, trained, photos, env, change, named):
    d = _copy(trained, tmp_path / "run")
    before = tree(d)
    p = run("nstyle-train", *TRAIN_DEBUG, f"data={photos}", "steps=30", *change, f"hydra.run.dir={d}", env=env)
    err = one_line_error(p, "nstyle-train")
    assert "holds another run's checkpoints" in err and named in err, err
    assert tree(d) == before


def test_resume_with_a_changed_data_folder_is_refused(tmp_path, trained, photos, env):
    d = _copy(trained, tmp_path / "run")
    data = _copy(photos, tmp_path / "photos")
    images.save_image(data / "extra.png", images.load_image("builtin:rocket", max_side=64))
    before = tree(d)
    p = run("nstyle-train", *TRAIN_DEBUG, f"data={data}", "steps=30", f"hydra.run.dir={d}", env=env)
    assert "data_digest=" in one_line_error(p, "nstyle-train")
    assert tree(d) == before


def test_raising_steps_resumes(tmp_path, trained, photos, env):
    d = _copy(trained, tmp_path / "run")
    old = tree(d / "checkpoints")
    p = run("nstyle-train", *TRAIN_DEBUG, f"data={photos}", "steps=30", f"hydra.run.dir={d}", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads((d / "metrics.json").read_text())["resumed_from_step"] == 20
    now = tree(d / "checkpoints")
    assert {k: now[k] for k in old} == old  # the earlier checkpoints were not rewritten
    assert "ckpt_00000030.npz" in now


def test_a_damaged_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(tmp_path, trained, photos, env):
    d = _copy(trained, tmp_path / "run")
    damaged = d / "checkpoints" / "ckpt_00000020.npz"
    damaged.write_bytes(damaged.read_bytes()[:5000])  # cut short, as by a full disk or a bad copy
    kept = hashlib.sha256(damaged.read_bytes()).hexdigest()
    ten = hashlib.sha256((d / "checkpoints" / "ckpt_00000010.npz").read_bytes()).hexdigest()
    p = run("nstyle-train", *TRAIN_DEBUG, f"data={photos}", "steps=20", f"hydra.run.dir={d}", env=env)
    assert p.returncode == 0, p.stderr
    assert "damaged checkpoint moved aside as ckpt_00000020.npz.damaged" in p.stdout + p.stderr
    aside = d / "checkpoints" / "ckpt_00000020.npz.damaged"
    assert hashlib.sha256(aside.read_bytes()).hexdigest() == kept  # reported, kept, never overwritten
    assert json.loads((d / "metrics.json").read_text())["resumed_from_step"] == 10
    assert hashlib.sha256((d / "checkpoints" / "ckpt_00000010.npz").read_bytes()).hexdigest() == ten
    checkpoint.read(d / "checkpoints" / "ckpt_00000020.npz")  # written again, whole


def test_only_damaged_checkpoints_stop_the_run_instead_of_starting_over(tmp_path, trained, photos, env):
    d = _copy(trained, tmp_path / "run")
    for p in (d / "checkpoints").glob("ckpt_*.npz"):
        p.write_bytes(b"PK\x03\x04 not a checkpoint")
    args = [*TRAIN_DEBUG, f"data={photos}", "steps=20", f"hydra.run.dir={d}"]
    p = run("nstyle-train", *args, env=env)
    err = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "holds no readable checkpoint, only damaged ones (ckpt_00000010.npz.damaged, " in err
    before = tree(d)
    again = run("nstyle-train", *args, env=env)  # still refused: it never starts over by itself
    assert "only damaged ones" in one_line_error(again, "nstyle-train")
    assert tree(d) == before
    assert checkpoint.all_steps(d / "checkpoints") == []


def _killing_script(target: str, nth: int, kind: str) -> str:
    """A Python program that runs a console script but SIGKILLs itself halfway through the
    ``nth`` write of ``kind`` ("npz": numpy.savez, "png": a PIL save), inside nstyle's atomic writer."""
    return textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        from PIL import Image
        calls = [0]
        def half_then_die(f):
            calls[0] += 1
            if calls[0] == {nth}:
                f.write(b"PK\\x03\\x04" + b"x" * 1000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        if {kind!r} == "npz":
            savez = np.savez
            def patched(f, *a, **k):
                half_then_die(f)
                return savez(f, *a, **k)
            np.savez = patched
        else:
            save = Image.Image.save
            def patched(self, fp, *a, **k):
                if not isinstance(fp, (str, os.PathLike)):
                    half_then_die(fp)
                return save(self, fp, *a, **k)
            Image.Image.save = patched
        sys.argv = ["{target}", *sys.argv[1:]]
        from nstyle.cli.{target.split("-")[1]} import main
        main()
        """
    )


def test_kill_9_during_a_checkpoint_write_loses_nothing(tmp_path, photos, env):
    d = tmp_path / "run"
    args = [*TRAIN_DEBUG, f"data={photos}", "steps=30", f"hydra.run.dir={d}"]
    script = _killing_script("nstyle-train", 2, "npz")  # the 2nd .npz: the checkpoint of step 20
    p = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr
    ckpts = d / "checkpoints"
    assert checkpoint.all_steps(ckpts) == [10]  # no ckpt_20, not even half of one
    checkpoint.read(ckpts / "ckpt_00000010.npz")
    assert [f for f in os.listdir(ckpts) if f.endswith(".tmp")]  # what SIGKILL leaves: a hidden temporary
    ten = tree(ckpts)["ckpt_00000010.npz"]
    again = run("nstyle-train", *args, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads((d / "metrics.json").read_text())["resumed_from_step"] == 10
    assert not [f for f in os.listdir(ckpts) if f.endswith(".tmp")]  # cleaned up under the lock
    assert tree(ckpts)["ckpt_00000010.npz"] == ten


def test_kill_9_during_a_result_write_leaves_no_half_result(tmp_path, env):
    earlier = tmp_path / "earlier"
    assert run("nstyle-stylize", *TINY, f"hydra.run.dir={earlier}", env=env).returncode == 0
    before = tree(earlier)
    d = tmp_path / "run"
    script = _killing_script("nstyle-stylize", 1, "png")  # snapshots off: the 1st PNG is result.png
    args = [*TINY, f"hydra.run.dir={d}"]
    p = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not (d / "result.png").exists() and not (d / "metrics.json").exists()
    again = run("nstyle-stylize", *args, env=env)  # no result there: the same directory runs again
    assert again.returncode == 0, again.stderr
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]
    images.load_image(d / "result.png")
    assert tree(earlier) == before


# ----------------------------------------------------------------------------- unwritable places


def test_unwritable_run_directory_is_one_line_before_any_work(tmp_path, env, photos, unprivileged):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "existing").mkdir()
    ro.chmod(0o555)
    (ro / "existing").chmod(0o555)
    try:
        for target in (ro / "new", ro / "existing"):
            p = run("nstyle-stylize", *TINY, f"hydra.run.dir={target}", env=env, prefix=unprivileged)
            assert f"cannot write to {target}" in one_line_error(p, "nstyle-stylize")
        p = run(
            "nstyle-train", *TRAIN_DEBUG, f"data={photos}", f"hydra.run.dir={ro / 'existing'}", env=env,
            prefix=unprivileged,
        )  # fmt: skip
        assert "cannot write to" in one_line_error(p, "nstyle-train")
        assert sorted(os.listdir(ro)) == ["existing"] and os.listdir(ro / "existing") == []
    finally:
        (ro / "existing").chmod(0o755)
        ro.chmod(0o755)
    # a writable run directory whose checkpoints/ is not: refused before training starts
    d = tmp_path / "train"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints").chmod(0o555)
    try:
        p = run("nstyle-train", *TRAIN_DEBUG, f"data={photos}", f"hydra.run.dir={d}", env=env, prefix=unprivileged)
        assert f"cannot write to {d / 'checkpoints'}" in one_line_error(p, "nstyle-train")
        assert set(os.listdir(d)) <= {".nstyle.lock", "checkpoints", "train.log"}  # Hydra's log: empty
        assert not (d / "train.log").exists() or (d / "train.log").stat().st_size == 0
    finally:
        (d / "checkpoints").chmod(0o755)


def test_unwritable_output_of_apply(tmp_path, trained, photos, env, unprivileged):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro / "out.png", ro / "sub" / "out.png"):
            args = [f"model={trained / 'model.npz'}", f"input={photos / 'chelsea.png'}", f"output={out}"]
            p = run("nstyle-apply", *args, env=env, prefix=unprivileged)
            assert f"cannot write to {ro}" in one_line_error(p, "nstyle-apply")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- every one-line error


def _nan_model(trained: Path, out: Path) -> Path:
    with np.load(trained / "model.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.startswith("params/"))
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan
    np.savez(out, **arrays)
    return out


def _bad_folder(d: Path) -> Path:
    d.mkdir()
    (d / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (d / "b.png").write_text("not a png")
    return d


def test_every_user_error_is_one_line_and_changes_nothing(tmp_path, trained, photos, env):
    earlier = tree(trained)
    bad = _bad_folder(tmp_path / "bad")
    nan_model = _nan_model(trained, tmp_path / "nan.npz")
    cases = [
        ("nstyle-train", [*TRAIN_DEBUG, f"data={bad}"], "no readable image in"),
        ("nstyle-train", [*TRAIN_DEBUG, f"data={photos}", "loss.style_weight=-1"], "got -1"),
        ("nstyle-train", [*TRAIN_DEBUG, f"data={photos}", "++loss.style_weight=-1e0"], "got -1e0"),
        ("nstyle-train", [*TRAIN_DEBUG, f"data={photos}", "loss.content_weight=nan"], "got nan"),
        ("nstyle-train", [*TRAIN_DEBUG, f"data={photos}", "size=100000"], "would fit"),
        ("nstyle-train", [*TRAIN_DEBUG, f"data={photos}", "optim.lrr=1"], "unknown key 'optim.lrr'"),
        ("nstyle-stylize", [*TINY, "loss.beta=-1"], "loss.beta must be a finite number >= 0, got -1"),
        ("nstyle-stylize", [*TINY, "-m", "loss.beta=1,-1"], "got -1"),
        ("nstyle-stylize", [*TINY, "size=100000"], "would fit"),
        ("nstyle-stylize", [*TINY, "loss.alpha=[1"], "no viable alternative"),
        ("nstyle-stylize", [*TINY, "loss.alpha=abc"], "loss.alpha: Value 'abc'"),
        ("nstyle-stylize", [*TINY, "network=vgg99"], "network/vgg99"),
        ("nstyle-stylize", [*TINY, "stylse=x"], "unknown key 'stylse'; valid keys here: content, style"),
        ("nstyle-sweep", [*TINY, "size=100000"], "would fit"),
        ("nstyle-sweep", [*TINY, "loss.beta=1,-1"], "got -1"),
        (
            "nstyle-apply",
            [f"model={nan_model}", f"input={photos / 'chelsea.png'}", f"output={tmp_path / 'o.png'}"],
            "NaN",
        ),
    ]
    for script, args, expected in cases:
        p = run(script, *args, env=env, cwd=tmp_path)
        assert expected in one_line_error(p, script), (script, args, p.stderr)
    assert sorted(os.listdir(tmp_path)) == ["bad", "nan.npz"]  # no run directory, no output
    assert tree(trained) == earlier


def test_experiment_errors_are_one_line(tmp_path, env):
    for module, args, expected in [
        ("experiments.alpha_beta_grid", ["--batched", "debug=tiny", "stlye=x"], "unknown key 'stlye'"),
        ("experiments.alpha_beta_grid", ["debug=tiny", "stlye=x"], "unknown key 'stlye'"),
        ("experiments.ablations", ["pooling", "debug=tiny", "loss.beta=-1"], "got -1"),
        ("experiments.content_reconstruction", ["debug=tiny", "sise=3"], "unknown key 'sise'"),
        ("experiments.content_reconstruction", ["debug=tiny", "size=100000"], "would fit"),
    ]:
        p = subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
        )
        prog = f"python -m {module}"
        err = [line for line in p.stderr.splitlines() if line.strip() and not line.startswith("nstyle-stylize")]
        assert p.returncode == 2 and "Traceback" not in p.stderr, (module, args, p.stderr)
        assert len(err) == 1 and err[0].startswith(f"{prog}: error: ") and expected in err[0], p.stderr
    assert os.listdir(tmp_path) == []


def test_collect_reports_an_unreadable_result_as_a_failed_job(tmp_path, env):
    sweep = tmp_path / "sweep"
    p = run("nstyle-stylize", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", env=env)
    assert p.returncode == 0, p.stderr
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    (jobs[0] / "result.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    p = run("nstyle-collect", str(sweep), "--no-eval", "--strict", env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"failed    {jobs[0].name}: result.png unreadable" in p.stdout
    assert "1 completed, 1 failed" in p.stdout


def test_a_sweep_into_a_directory_with_finished_jobs_is_refused(tmp_path, env):
    sweep = tmp_path / "sweep"
    assert run("nstyle-stylize", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", env=env).returncode == 0
    before = tree(sweep)
    p = run("nstyle-stylize", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", env=env)
    assert "already holds 2 finished job(s)" in one_line_error(p, "nstyle-stylize")
    assert tree(sweep) == before


def test_batched_sweep_splits_a_batch_that_does_not_fit(tmp_path, monkeypatch):
    """Members that cannot all fit as one batch run as smaller batches, the memory checked first."""
    from nstyle import transfer
    from nstyle.cli import app, sweep

    cfgs = []
    for beta in ("1e3", "1e4", "1e5"):
        cfg = app.check_overrides("config", [*TINY, f"loss.beta={beta}"])
        cfgs.append(app.without_hydra(cfg))
    from nstyle.cli import schema

    s = schema.stylize_settings(cfgs[0])
    one, two = (transfer.needed_bytes(s, transfer.load_inputs(s), batch=b) for b in (1, 2))
    monkeypatch.setattr(sweep.memory, "available_bytes", lambda: two)
    assert sweep.batch_that_fits(cfgs) == 2
    # half of what one image needs beyond the runtime (which the estimate counts once)
    monkeypatch.setattr(
        sweep.memory, "available_bytes", lambda: sweep.memory.BASE_BYTES + (one - sweep.memory.BASE_BYTES) // 2
    )
    with pytest.raises(transfer.MemoryBudgetError, match="would fit"):
        sweep.batch_that_fits(cfgs)


def test_experiment_reruns_never_overwrite_nor_mix(tmp_path):
    from experiments import content_reconstruction as exp
    from nstyle.cli import app

    def cfg(*overrides):
        from omegaconf import OmegaConf

        c = app.check_overrides(
            exp.NAME, ["debug=tiny", *overrides], Path(exp.__file__).parent / "conf", exp.ContentReconstructionConfig
        )
        return OmegaConf.to_object(app.without_hydra(c))

    out = tmp_path / "run"
    exp.run(cfg("layers=[conv1_2]"), out)
    before = tree(out)
    with pytest.raises(exp._common.ExperimentError, match="already holds a run"):
        exp.run(cfg("layers=[conv1_2]"), out)
    with pytest.raises(exp._common.ExperimentError, match=r"other settings \(layers=\['conv1_2'\] there"):
        exp.run(cfg("layers=[conv2_2]", "resume=true"), out)  # would leave recon_conv1_2.png beside the new table
    assert tree(out) == before


def test_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = checkpoint.save(tmp_path / "ckpt", 1, {"a": np.zeros(3)})
        from nstyle.cli import collect

        (tmp_path / "sweep" / "job").mkdir(parents=True)
        s = collect.summarize(tmp_path / "sweep", evaluate=False)
    finally:
        os.umask(old)
    for p in [path, *s.files.values()]:
        assert oct(p.stat().st_mode & 0o777) == "0o644", p


def test_sweeps_exit_1_when_a_job_failed_without_a_traceback(tmp_path, env):
    sweep = tmp_path / "sweep"
    p = run("nstyle-stylize", "-m", *TINY, "style=builtin:ihc,missing.png", f"hydra.sweep.dir={sweep}", env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "nstyle-stylize: error: missing.png: no such file" in p.stderr
    assert (sweep / "debug=tiny,style=builtin_:ihc" / "result.png").exists()  # the good job still ran
    p = subprocess.run(
        [sys.executable, "-m", "experiments.ablations", "pooling", *TINY, "style=missing.png", "--no-eval"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "2 failed" in p.stdout
