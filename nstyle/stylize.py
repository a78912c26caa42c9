"""``nstyle-stylize``: one Gatys et al. stylisation per run, configured by Hydra.

    nstyle-stylize                                          # built-in demo, the paper's settings
    nstyle-stylize content=photo.jpg style=painting.jpg size=512 steps=500 seed=1
    nstyle-stylize style=[a.jpg,b.jpg] style_blend=[0.7,0.3] preserve_color=luminance
    nstyle-stylize schedule=[256] size=512                  # coarse to fine: 256 px, then 512 px
    nstyle-stylize experiment=demo_texture style=painting.jpg   # texture synthesis (α = 0)
    nstyle-stylize -m loss.alpha=1,10 loss.beta=1e3,1e4     # a sweep; one dir per job

The run directory (Hydra's; ``hydra.run.dir=DIR``) receives ``result.png``,
``snapshots/step_XXXX.png``, ``metrics.json`` and Hydra's ``.hydra/``. A directory that
already holds a result is refused unless ``overwrite=true``. Mistakes in the input end the
program with one line ``nstyle-stylize: error: ...`` and exit status 2.

:func:`run` is the library-level entry (settings in, files out); :func:`task` is the Hydra
task function and returns the final total loss, for sweepers that optimise it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nstyle import config as config_mod

PROG = "nstyle-stylize"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # conf/ next to the package (editable install)
RESULT_FILES = ("result.png", "metrics.json")


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


# --------------------------------------------------------------------------- preparing


@dataclasses.dataclass
class Inputs:
    """The images of a run at full resolution (before per-stage resizing)."""

    content: Optional[np.ndarray]  # (H, W, 3) or None
    styles: list[np.ndarray]  # [(h, w, 3)]
    init: Optional[np.ndarray]  # an init image given as a file, else None


def load_inputs(s: config_mod.Settings) -> Inputs:
    from nstyle import images, optimize

    content = images.load_image(s.content) if s.content is not None else None
    styles = [images.load_image(p) for p in s.styles]
    init = None
    if s.init not in optimize.INITS:
        init = images.load_image(s.init)  # a file: resized to the output at each stage
    elif s.init == "style" and not styles:
        raise UserError("init=style needs a style image (beta > 0 and style=PATH)")
    return Inputs(content=content, styles=styles, init=init)


def stage_shape(inputs: Inputs, size: int) -> tuple[int, int]:
    """(H, W) of the output at longest side ``size``: the content's aspect, else the first style's."""
    ref = inputs.content if inputs.content is not None else (inputs.styles[0] if inputs.styles else inputs.init)
    h, w = (1, 1) if ref is None else ref.shape[:2]
    k = size / max(h, w)
    return max(1, round(h * k)), max(1, round(w * k))


def stage_images(s: config_mod.Settings, inputs: Inputs, size: int):
    """Content, styles (and init file) resized for one stage, with colour preservation applied.

    Returns ``(content, styles, init_file, shape)``; in luminance mode the images are the
    grey (Y, Y, Y) versions the optimisation works on.
    """
    from nstyle import color, images

    shape = stage_shape(inputs, size)
    content = images.resize(inputs.content, shape) if inputs.content is not None else None
    # the style's longest side is style_scale × the output's, so its features have the same scale
    styles = [images.resize_longest(x, max(1, round(s.style_scale * size))) for x in inputs.styles]
    if s.preserve_color == "histogram":
        styles = [color.match_color_histogram(x, content) for x in styles]
    elif s.preserve_color == "luminance":
        pairs = [color.luminance_only(content, x) for x in styles]
        styles = [st for _, st in pairs]
        content = pairs[0][0] if pairs else color.luminance_only(content, content)[0]
    init = images.resize(inputs.init, shape) if inputs.init is not None else None
    return content, styles, init, shape


def check_sizes(s: config_mod.Settings, inputs: Inputs, budget_bytes: int) -> None:
    """Every stage's output and style images are big enough for the deepest layer, and the
    largest stage's activations fit in ``budget_bytes``; ImageError/UserError otherwise."""
    from nstyle import images, vgg

    min_side = vgg.min_size(s.loss.layers, s.arch)
    for size in s.sizes:
        shape = stage_shape(inputs, size)
        images.check_size(shape, min_side, name=f"output at size={size} ({shape[1]}×{shape[0]})")
        for path, x in zip(s.styles, inputs.styles):
            sh = images._longest_shape(x.shape[:2], max(1, round(s.style_scale * size)))
            images.check_size(sh, min_side, name=f"style {path} at style_scale={s.style_scale:g}, size={size}")
    size = s.sizes[-1]
    h, w = stage_shape(inputs, size)
    need = images.estimate_activation_bytes(h, w, s.loss.layers, s.arch)
    if s.styles:  # the largest style image goes through the network too (forward only, but be safe)
        need = max([need] + [images.estimate_activation_bytes(*images._longest_shape(x.shape[:2], round(s.style_scale * size)),
                                                              s.loss.layers, s.arch) for x in inputs.styles])
    if need > budget_bytes:
        fit = images.max_side_that_fits(budget_bytes, w / h, s.loss.layers, s.arch)
        if s.styles and s.style_scale > 1:
            fit = int(fit / s.style_scale)
        hint = f"size={fit} would fit" if fit >= vgg.min_size(s.loss.layers, s.arch) else "no useful size fits"
        raise UserError(f"size={size}: the VGG activations need about {need / 2**30:.1f} GiB but only "
                        f"{budget_bytes / 2**30:.1f} GiB is available; {hint} (or raise max_memory_gb)")


def check_run_dir(out_dir: Path, overwrite: bool) -> None:
    held = [f for f in RESULT_FILES if (out_dir / f).exists()]
    if held and not overwrite:
        raise UserError(f"{out_dir} already holds a result ({', '.join(held)}); choose another hydra.run.dir "
                        f"or pass overwrite=true to replace it")


# ------------------------------------------------------------------------------ running


class Progress:
    """tqdm bar over all stages with the current loss terms, and the snapshot writer."""

    def __init__(self, total: int, quiet: bool, snapshot_every: int, snap_dir: Path, finish, show_tv: bool):
        self.total, self.quiet, self.every, self.snap_dir, self.finish = total, quiet, snapshot_every, snap_dir, finish
        self.show_tv = show_tv
        self.done = 0
        self.bar = None

    def __call__(self, i: int, state, m: dict) -> None:
        self.done += 1
        if not self.quiet:
            if self.bar is None and self.done == 1:  # made at the first iteration: it/s counts no loading/compiling
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=PROG, unit="it", dynamic_ncols=True, file=sys.stderr)
        if self.bar is not None:
            self.bar.update(1)
            post = {"loss": m["loss"][0], "content": m["content"][0], "style": m["style"][0]}
            if self.show_tv:
                post["tv"] = m["tv"][0]
            self.bar.set_postfix({k: f"{float(v):.3g}" for k, v in post.items()}, refresh=False)
            if self.done == self.total:
                self.close()  # now, so the final evaluation does not count towards it/s
        if self.every and self.done % self.every == 0:
            from nstyle import images

            x = np.clip(np.asarray(state.image[0], np.float32), 0.0, 1.0)
            images.save_image(self.snap_dir / f"step_{self.done:04d}.png", self.finish(x))

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(s: config_mod.Settings, out_dir: Path, *, overwrite: bool = False, quiet: bool = True,
        max_memory_bytes: Optional[int] = None, extra_metrics: Optional[dict] = None) -> dict:
    """Stylise with settings ``s`` into ``out_dir``; returns the metrics written to metrics.json.

    Everything about the inputs is checked before the network is loaded.
    """
    import jax

    from nstyle import color, images, optimize, runinfo, vgg, weights

    out_dir = Path(out_dir)
    check_run_dir(out_dir, overwrite)
    inputs = load_inputs(s)
    budget = max_memory_bytes if max_memory_bytes is not None else images.available_memory_bytes()
    check_sizes(s, inputs, budget)
    # prepared once here, not again for each coarse-to-fine stage (optimize.stylize_batch reuses them)
    params = vgg.with_backward_kernels(weights.load(s.arch), s.loss.layers)

    def finish(x: np.ndarray) -> np.ndarray:
        """The optimised image -> the image to save (luminance mode puts the colour back)."""
        if s.preserve_color == "luminance":
            return color.recombine_luminance(x, inputs.content)
        return x

    key = jax.random.key(s.seed)
    progress = Progress(sum(s.stage_steps), quiet, s.snapshot_every, out_dir / "snapshots", finish, s.loss.tv_weight > 0)
    stages, history, image = [], {}, None
    reason, evals, iters = "steps", 0, 0
    t_start = time.perf_counter()
    try:
        for k, (size, steps) in enumerate(zip(s.sizes, s.stage_steps)):
            content, styles, init_file, shape = stage_images(s, inputs, size)
            if image is not None:
                init = images.resize(image, shape)  # coarse to fine: the previous result, upsampled
            elif init_file is not None:
                init = init_file
            else:
                init = s.init
            optim = dataclasses.replace(s.optim, steps=steps)
            r = optimize.stylize(params, s.loss, content=content, styles=styles, style_blend=s.style_blend,
                                 shape=shape, init=init, key=jax.random.fold_in(key, k), optim=optim,
                                 callback=progress)
            image = r.image
            for name, v in r.history.items():
                history.setdefault(name, []).extend(v)
            evals += r.evals
            iters += r.iterations
            stages.append({"size": size, "shape": list(shape), "iterations": r.iterations, "evals": r.evals,
                           "restarts": r.restarts, "lbfgs_memory_resets": r.resets,
                           "compile_s": r.compile_s, "wall_s": r.wall_s, "stopped_reason": r.stopped_reason,
                           "final": r.final})
            if r.stopped_reason != "steps":
                reason = r.stopped_reason
                break
    finally:
        progress.close()
    wall = time.perf_counter() - t_start
    result = finish(image)
    final = stages[-1]["final"]
    metrics = {
        "result": "result.png",
        "stopped_reason": reason,
        "final_loss": final["loss"],
        "final": final,
        "iterations": iters,
        "evals": evals,
        "evals_per_iter": evals / max(iters, 1),
        "compile_s": sum(st["compile_s"] for st in stages),
        "optimize_s": sum(st["wall_s"] for st in stages),
        "wall_s": wall,
        "stages": stages,
        "history": history,
        "result_sha256": runinfo.array_sha256(images.to_uint8(result)),
        "inputs": {
            "content": _input_info(s.content),
            "styles": [_input_info(p) for p in s.styles],
            "init": _input_info(s.init) if s.init not in optimize.INITS else s.init,
        },
        "settings": {"loss": s.loss, "optim": s.optim, "arch": s.arch, "sizes": s.sizes,
                     "stage_steps": s.stage_steps, "style_blend": s.style_blend, "style_scale": s.style_scale,
                     "preserve_color": s.preserve_color},
        **runinfo.collect(params=params, seed=s.seed),
        **(extra_metrics or {}),
    }
    images.save_image(out_dir / "result.png", result)
    runinfo.write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


def _input_info(spec: Optional[str]) -> Optional[dict]:
    if spec is None:
        return None
    from nstyle import images, runinfo

    path = images.resolve(spec)
    return {"spec": spec, "path": str(path.resolve()), "sha256": runinfo.file_sha256(path)}


# ------------------------------------------------------------------------- command line


def _fail(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def task(cfg) -> float:
    """The Hydra task: validate, stylise into Hydra's run dir; returns the final total loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nstyle import images, weights

    logging.getLogger("jax").setLevel(logging.WARNING)  # Hydra logs INFO; jax's backend probing is noise
    try:
        hc = HydraConfig.get()
        out_dir = Path(hc.runtime.output_dir)
        multirun = hc.mode == RunMode.MULTIRUN
    except ValueError:  # called without Hydra (e.g. main(cfg) from a script)
        out_dir, multirun = Path.cwd(), False
    quiet = cfg.quiet if cfg.quiet is not None else multirun
    try:
        from nstyle import _xla

        _xla.persistent_cache()  # a sweep's later jobs (and the next run) reuse the compiled step
        s = config_mod.to_library(cfg)
        max_mem = int(cfg.max_memory_gb * 2**30) if cfg.max_memory_gb is not None else None
        metrics = run(s, out_dir, overwrite=cfg.overwrite, quiet=quiet, max_memory_bytes=max_mem)
    except (UserError, images.ImageError, weights.WeightsError, ValueError, FileExistsError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if multirun:
            # an exception (not sys.exit) lets Hydra mark this job failed and run the others;
            # the collector then reports it as failed with this message
            print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
            raise UserError(msg) from None
        _fail(msg)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(130)
    reason = metrics["stopped_reason"]
    if reason == "nonfinite":
        print(f"{PROG}: warning: the loss became NaN/inf after {metrics['iterations']} iterations; the run stopped "
              f"and {out_dir / 'result.png'} is the last image with a finite loss", file=sys.stderr)
    elif reason == "interrupted":
        print(f"{PROG}: interrupted after {metrics['iterations']} iterations; partial result in {out_dir}", file=sys.stderr)
        sys.exit(130)
    if not quiet:
        print(f"{out_dir / 'result.png'}  loss {metrics['final_loss']:.4g}  {metrics['iterations']} it  "
              f"{metrics['evals_per_iter']:.2f} evals/it  {metrics['wall_s']:.1f} s", file=sys.stderr)
    loss = metrics["final_loss"]
    return float(loss) if isinstance(loss, (int, float)) else math.nan


def _precheck_argv(argv: list[str]) -> None:
    """Refuse an explicit ``hydra.run.dir`` that holds a result *before* Hydra writes its
    ``.hydra/`` files there (they would no longer describe the result beside them)."""
    if "-m" in argv or "--multirun" in argv:
        return
    overwrite = any(a.lower() in ("overwrite=true", "overwrite=1", "overwrite=yes") for a in argv)
    for a in argv:
        if a.startswith("hydra.run.dir=") and "${" not in a and not overwrite:
            try:
                check_run_dir(Path(a.split("=", 1)[1]).expanduser(), False)
            except UserError as e:
                _fail(str(e))


def main(cfg=None):
    """Console script. With ``cfg`` (a composed config) it runs :func:`task` and returns the
    final total loss; without, it parses the command line with Hydra (and returns None, so
    the console script exits 0)."""
    import hydra

    config_mod.register()
    if cfg is not None:
        return task(cfg)
    _precheck_argv(sys.argv[1:])
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)()


if __name__ == "__main__":
    main()
