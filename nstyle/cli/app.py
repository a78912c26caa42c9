"""What every Hydra command shares: where the configs are, and how a command line starts.

The configs live in ``conf/`` at the top of the repository; the wheel ships the same files
as ``nstyle/conf/`` (package data). :func:`conf_dir` finds them either way, so the commands
work from any folder, installed editable or not.

:func:`hydra_main` starts a command line in this order, so that nothing is created or
changed by a run that is refused: compose the config once and check every key and value
(:func:`check_overrides`, ``+key=`` included); create the run (or sweep) directory, unique
unless given (:class:`RunDir`); check it (``precheck``) and lock it; only then hand over to
Hydra, which in run mode writes no ``.hydra/`` (the task writes it with
:func:`write_hydra_files` once its own checks passed).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException

from nstyle import _io, _rundir, distributed
from nstyle._errors import UserError
from nstyle.cli import schema
from nstyle.cli.errors import fail, message

# the schema each Hydra config of nstyle/conf is checked against (``+key=`` included)
SCHEMAS: dict[str, type] = {"config": schema.StylizeSchema, "train": schema.TrainSchema}
# where a task writes Hydra's records (``.hydra/``) once its checks passed; set by hydra_main
SUBDIR_ENV = "NSTYLE_HYDRA_SUBDIR"
INFO_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")


def conf_dir() -> Path:
    """``nstyle/conf`` of an installed wheel, else ``conf/`` beside the package in a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file() and (candidate / "train.yaml").is_file():
            return candidate
    raise UserError(
        f"nstyle's configs are missing (looked in {package / 'conf'} and {package.parent / 'conf'}); reinstall nstyle"
    )


def quiet_jax_logs() -> None:
    """Hydra logs at INFO; JAX's backend probing at that level is noise in every run log."""
    logging.getLogger("jax").setLevel(logging.WARNING)


def overrides_of(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` overrides of a Hydra command line (flags and their values dropped)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--experimental-rerun"):
            skip = True
            continue
        if a.startswith("-"):
            continue
        out.append(a)
    return out


class JobError(CompactHydraException, UserError):
    """A user error in one job of a Hydra multirun: Hydra marks the job failed, runs the
    others, exits with status 1 and prints this message (not a traceback)."""


def without_hydra(cfg):
    """A composed config as Hydra hands it to a task: without its ``hydra`` node."""
    import copy

    from omegaconf import open_dict, read_write

    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        task_cfg.pop("hydra", None)
    return task_cfg


def check_overrides(
    config_name: str,
    argv: Sequence[str],
    config_dir: Path | None = None,
    schema_cls: type | None = None,
    validate: Callable[[Any], Any] | None = None,
):
    """Compose the config the command line asks for once, before Hydra runs anything, so a
    misspelt key (also one added with ``+key=`` or ``++key=``), a wrong type or a bad group
    choice is a :class:`UserError` (one line, exit status 2) instead of Hydra's report, and
    nothing is created. Sweep values (``a=1,2``) are checked one by one, each also by
    ``validate(cfg)`` (the command's own checks of values). Returns the config composed from
    the plain (non-sweep) overrides, with its ``hydra`` node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    schema_cls = schema_cls if schema_cls is not None else SCHEMAS.get(config_name)
    overrides = overrides_of(argv)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(message(e)) from None
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    variants = [plain]
    for o in parsed:
        if o.is_sweep_override():
            key = o.input_line.split("=", 1)[0]
            variants += [plain + [f"{key}={v}"] for v in o.sweep_string_iterator()]
    schema.register()
    composed = []
    try:
        with initialize_config_dir(config_dir=str(config_dir or conf_dir()), version_base="1.3"):
            for v in variants:
                composed.append(compose(config_name=config_name, overrides=v, return_hydra_config=True))
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(_composition_message(e, schema_cls)) from None
    for cfg in composed:
        if schema_cls is not None:
            schema.check_known_keys(cfg, schema_cls)
        if validate is not None:
            validate(cfg)
    return composed[0]


def _composition_message(e: Exception, schema_cls: type | None) -> str:
    """One line for a failed composition: an unknown key lists the valid ones (Hydra's own
    message suggests ``+key=``, which the schema refuses anyway); a bad value names its key."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = e.__cause__
    m = re.match(r"Could not override '([^']+)'", message(e))
    if m and schema_cls is not None and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return schema.unknown_key_message(m.group(1), schema_cls)
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {message(cause)}"
    return message(e)


def quote(value: str) -> str:
    """``value`` as a quoted Hydra override value that parses back to exactly ``value``
    (spaces, commas, quotes, non-ASCII). Backslashes need doubling only before a quote or at the end."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"


def _select(cfg, key: str) -> str:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(cfg)  # ${hydra:...} and ${now:...} resolve as in the run
    return str(OmegaConf.select(cfg, key))


def _given(argv: Sequence[str], key: str) -> bool:
    """Whether the command line sets ``key`` (in any form: ``key=``, ``+key=``, ``++key=``, quoted)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return any(o.key_or_group == key for o in OverridesParser.create().parse_overrides(overrides_of(argv)))


def _without(argv: Sequence[str], key: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for a in argv:
        if "=" in a and not a.startswith("-"):
            try:
                if parser.parse_override(a).key_or_group == key:
                    continue
            except Exception:  # noqa: BLE001 -- not an override (a flag's value): keep it
                pass
        out.append(a)
    return out


class RunDir:
    """The directory a command line will run in, created and locked before Hydra starts.

    Run mode: ``hydra.run.dir``; without one on the command line the default
    (``outputs/<cmd>/<time>``) is made unique (``_2``, ``_3``, ...). Multirun: the same for
    ``hydra.sweep.dir``. The lock (:mod:`nstyle._rundir`) is held until the command ends.
    Of the processes of a multi-process run (:mod:`nstyle.distributed`), process 0 creates,
    locks and, after a failure, removes the directory; the others only use it.
    """

    def __init__(self, cfg, argv: Sequence[str], multirun: bool):
        self.key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        self.multirun = multirun
        self.shared = distributed.launch_rank()[0] > 0
        wanted = Path(_select(cfg, self.key)).expanduser()
        self.explicit = _given(argv, self.key)
        self.existed = self.explicit and wanted.exists()
        self.new_parents = [p for p in wanted.absolute().parents if not p.exists()]  # removed again on failure
        if self.explicit or self.shared:  # (the other processes of a run are given process 0's)
            self.path = wanted
        else:
            try:
                self.path = _rundir.unique_dir(wanted)
            except OSError as e:
                raise _rundir.RunDirError(
                    f"cannot create {wanted} ({e.strerror or e}); run from a writable folder or give hydra.run.dir=DIR"
                ) from None
        self.subdir = None if multirun else _select(cfg, "hydra.output_subdir")
        if self.subdir == "None":
            self.subdir = None

    def lock(self) -> None:
        """Take the directory's lock (:func:`nstyle._rundir.acquire`), creating it if needed."""
        if self.shared:  # process 0 of this run holds it
            self.path.mkdir(parents=True, exist_ok=True)
            return
        try:
            _rundir.acquire(self.path)
        except UserError:
            if not self.existed:
                for p in [self.path, *self.new_parents]:
                    _remove_empty(p)
            raise

    def hydra_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` with this directory as Hydra's, quoted; in run mode Hydra writes no
        ``.hydra/``: the task does (:func:`write_hydra_files`) once its checks have passed."""
        out = [*_without(argv, self.key), f"{self.key}={quote(str(self.path))}"]
        if not self.multirun:
            out = _without(out, "hydra.output_subdir") + ["hydra.output_subdir=null"]
        return out

    def close(self, failed: bool) -> None:
        """Give the lock back; after a failure remove the directory if this run created it and
        left nothing of its own there (only Hydra's records and logs)."""
        if self.shared:
            return
        if failed and not self.existed and _rundir.remove_if_unused(self.path):
            for parent in self.new_parents:
                _remove_empty(parent)
        _rundir.release(self.path)


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def write_hydra_files(out_dir: str | os.PathLike, cfg) -> None:
    """Hydra's records of this run (``config.yaml``, ``hydra.yaml``, ``overrides.yaml`` in
    ``hydra.output_subdir``), written atomically by the task once nothing can refuse the run,
    so a refused run never replaces the records of the result beside them."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    subdir = os.environ.get(SUBDIR_ENV)
    if not subdir or not HydraConfig.initialized():
        return
    plain = OmegaConf.to_container(HydraConfig.instance().cfg, resolve=False, enum_to_str=True)
    hydra_cfg = OmegaConf.create({"hydra": {**plain["hydra"], "output_subdir": subdir}})
    d = Path(out_dir) / subdir
    _io.write_text(d / "config.yaml", OmegaConf.to_yaml(cfg))
    _io.write_text(d / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    _io.write_text(d / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


def hydra_main(
    prog: str,
    config_name: str,
    task: Callable[[Any], Any],
    argv: Sequence[str] | None = None,
    *,
    config_dir: Path | None = None,
    schema_cls: type | None = None,
    precheck: Callable[[Path, Any, bool], None] | None = None,
    validate: Callable[[Any], Any] | None = None,
) -> None:
    """Run ``task`` as a Hydra app on ``argv`` (default ``sys.argv[1:]``) with nstyle's configs.

    Before Hydra starts: the overrides are checked (:func:`check_overrides`), the run (or
    sweep) directory is created and locked (:class:`RunDir`), and ``precheck(dir, cfg,
    multirun)`` may refuse it; a refusal is one line, exit status 2, and changes nothing.
    A run that fails leaves no directory it created holding only Hydra's records.
    """
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    config_dir = Path(config_dir) if config_dir is not None else conf_dir()
    schema.register()
    run_dir = None
    if not any(a in INFO_FLAGS for a in argv):
        multirun = "-m" in argv or "--multirun" in argv
        try:
            cfg = check_overrides(config_name, argv, config_dir, schema_cls, validate)
            run_dir = RunDir(cfg, argv, multirun)
            if precheck is not None and run_dir.existed:
                precheck(run_dir.path, cfg, multirun)  # read-only: a refused run does not even lock
            run_dir.lock()
        except UserError as e:
            fail(prog, message(e))
        try:
            if precheck is not None:
                precheck(run_dir.path, cfg, multirun)  # again, now that no other run can write there
        except UserError as e:
            run_dir.close(failed=True)
            fail(prog, message(e))
        argv = run_dir.hydra_argv(argv)
        if run_dir.subdir is not None:
            os.environ[SUBDIR_ENV] = run_dir.subdir
    saved = sys.argv
    sys.argv = [saved[0], *argv]
    failed = True
    try:
        hydra.main(config_path=str(config_dir), config_name=config_name, version_base="1.3")(task)()
        failed = False
    except SystemExit as e:
        failed = e.code not in (0, None)
        raise
    finally:
        sys.argv = saved
        if run_dir is not None:
            os.environ.pop(SUBDIR_ENV, None)
            run_dir.close(failed)
