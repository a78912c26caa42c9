"""What every Hydra command shares: where the configs are, and how a command line starts.

The configs live in ``conf/`` at the top of the repository; the wheel ships the same files
as ``nstyle/conf/`` (package data). :func:`conf_dir` finds them either way, so the commands
work from any folder, installed editable or not.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nstyle._errors import UserError
from nstyle.cli import schema
from nstyle.cli.errors import fail, message


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


def check_overrides(config_name: str, argv: Sequence[str]) -> None:
    """Compose the config the command line asks for once, before Hydra runs anything, so a
    misspelt key, a wrong type or a bad group choice is a :class:`UserError` (one line, exit
    status 2) instead of Hydra's report. Sweep values (``a=1,2``) are checked one by one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

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
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            for v in variants:
                compose(config_name=config_name, overrides=v, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(message(e)) from None


def hydra_main(prog: str, config_name: str, task: Callable[[Any], Any], argv: Sequence[str] | None = None) -> None:
    """Run ``task`` as a Hydra app on ``argv`` (default ``sys.argv[1:]``) with nstyle's configs."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    schema.register()
    if not any(
        a in ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc") for a in argv
    ):
        try:
            check_overrides(config_name, argv)
        except UserError as e:
            fail(prog, message(e))
    saved = sys.argv
    sys.argv = [saved[0], *argv]
    try:
        hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(task)()
    finally:
        sys.argv = saved
