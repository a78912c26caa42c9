"""Gatys et al. image optimisation: one jitted step over the image(s), driven by optax.

    params = nstyle.weights.load("vgg19")
    loss = nstyle.losses.PerceptualLoss()                       # the paper's layers, α=1, β=1e3
    res = nstyle.optimize.stylize(params, loss, content=c, styles=[s],
                                  key=jax.random.key(0), optim=OptimConfig(steps=300))
    res.image      # (H, W, 3) float32 in [0, 1]
    res.history    # {"loss": [...], "content": [...], "style": [...], "style/conv1_1": [...], ...}

Design (see also ``make_step``):

- **What is optimised**: the pixels themselves, unconstrained, as in the paper and in Gatys'
  own PyTorch code. L-BFGS builds its curvature model from the differences of successive
  iterates; clipping after each step would make those differences lie (the step taken is not
  the step the model proposed), so the image is clipped to [0, 1] once, at the end.
  ``OptimConfig.project=True`` clips after every step instead (projected gradient), which is
  sound for Adam.
- **L-BFGS without a line search** is the default: ``optax.lbfgs(linesearch=None)`` takes the
  quasi-Newton step with unit length (the first one scaled by 1/‖g‖), exactly one loss+gradient
  evaluation per iteration — what ``torch.optim.LBFGS`` does with its default
  ``line_search_fn=None``, and what the PyTorch style-transfer tools use. The zoom line search
  (``linesearch="zoom"``) makes the same progress per iteration at several times the cost on
  the CPU, where the VGG passes inside its ``while_loop`` run slowly (benchmarks/STYLIZE.md).
- **Batches** of B images with per-image loss weights (α, β, TV weight, each (B,)) are
  optimised independently: the per-image loss, its gradient and the optax update are all
  ``vmap``-ed over the batch, so each image has its own L-BFGS memory and step sizes, exactly
  as if it ran alone; the VGG passes still run as one batched convolution. Given a mesh
  (:func:`nstyle.distributed.make_mesh`), the batch is split over its devices, those of
  several processes too, the way FastNet training splits its batches of photos.
- **Non-finite loss**: an image whose loss becomes NaN/inf is frozen at its last image with a
  finite loss (per image, inside the step); a run stops when every image is frozen.
- **The result** of N steps is, per image, the best of the N evaluated iterates (the lowest
  finite loss; with L-BFGS nearly always the last one evaluated), and its reported loss terms
  are those evaluated at it: no extra evaluation after the loop. The N-th step's proposal,
  never evaluated, is dropped, as a step that blew up or went NaN would have to be.
  With ``OptimConfig.average`` set, the result is instead the exponential moving average of
  the evaluated iterates (bias-corrected, as Adam's moments), evaluated once after the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from nstyle import _xla, distributed, losses, vgg

OPTIMIZERS = ("lbfgs", "adam")
LINESEARCHES = ("none", "zoom")
INITS = ("content", "noise", "style")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}  # L-BFGS: unit quasi-Newton step; Adam: in [0, 1] pixel units


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """How the image is optimised. Hashable: a static argument of the jitted step.

    Attributes:
      name: ``"lbfgs"`` (the paper's) or ``"adam"``.
      steps: iterations (one loss+gradient evaluation each, except with the zoom line search).
      lr: step scale; ``None`` picks ``DEFAULT_LR[name]`` (1.0 for L-BFGS, 0.02 for Adam,
        whose steps are in units of the [0, 1] pixel range).
      memory: L-BFGS history length (pairs of iterate/gradient differences kept).
      linesearch: ``"none"`` (one evaluation per iteration) or ``"zoom"`` (optax's
        strong-Wolfe line search; more robust, several times slower per iteration on CPU).
      max_linesearch_steps: cap on the zoom line search's evaluations per iteration.
      project: clip the image to [0, 1] after every step (sound for Adam; spoils L-BFGS's
        curvature pairs). Otherwise pixels are free during the run and clipped at the end.
      average: ``None``, or the decay d of an exponential moving average of the evaluated
        iterates, x̄ ← d x̄ + (1 − d) x (bias-corrected), returned as the result: the average of
        roughly the last 1/(1 − d) iterates, which smooths the noise of Adam's last steps.
    """

    name: str = "lbfgs"
    steps: int = 200
    lr: float | None = None
    memory: int = 10
    linesearch: str = "none"
    max_linesearch_steps: int = 20
    project: bool = False
    average: float | None = None

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimiser '{self.name}' (expected one of {', '.join(OPTIMIZERS)})")
        if self.linesearch not in LINESEARCHES:
            raise ValueError(f"unknown line search '{self.linesearch}' (expected one of {', '.join(LINESEARCHES)})")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.memory < 1:
            raise ValueError(f"L-BFGS memory must be >= 1, got {self.memory}")
        if self.max_linesearch_steps < 1:
            raise ValueError(f"max_linesearch_steps must be >= 1, got {self.max_linesearch_steps}")
        if self.average is not None and not 0 <= self.average < 1:
            raise ValueError(f"average (the decay of the iterate average) must be in [0, 1), got {self.average}")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.name] if self.lr is None else float(self.lr)

    @property
    def uses_zoom(self) -> bool:
        return self.name == "lbfgs" and self.linesearch == "zoom"


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformationExtraArgs:
    """The optax transformation for ONE image (the step vmaps it over the batch)."""
    if optim.name == "adam":
        return optax.adam(optim.learning_rate)
    linesearch = None
    if optim.linesearch == "zoom":
        # "one": try the full quasi-Newton step first; it is accepted almost always
        linesearch = optax.scale_by_zoom_linesearch(optim.max_linesearch_steps, initial_guess_strategy="one")
    return optax.lbfgs(learning_rate=optim.learning_rate, memory_size=optim.memory, linesearch=linesearch)


def lbfgs_update(opt: optax.GradientTransformation, grad: jax.Array, opt_state, x: jax.Array, lr: float):
    """``opt.update`` of optax's L-BFGS (no line search), made safe for a non-convex loss.

    optax keeps every curvature pair (s, y), also one with sᵀy <= 0, which a non-convex loss
    such as the Gram-matrix style loss produces; the inverse-Hessian estimate is then
    indefinite and the direction can point uphill. Without a line search L-BFGS then may climb
    to a saddle and stay there (docs/experiments.md, the α/β grid). Here a direction that is
    not a descent direction (gᵀd >= 0) drops the memory and takes the
    scaled gradient step of a fresh start instead. ``lr`` is ``opt``'s learning rate. Returns
    ``(updates, state, reset)``.
    """
    updates, state = opt.update(grad, opt_state, x)
    fresh_updates, fresh_state = _fresh_lbfgs_update(opt, grad, x, lr, state)
    reset = jnp.vdot(updates, grad) >= 0  # uphill, or no move at all
    updates = jax.tree.map(lambda f, u: jnp.where(reset, f, u), fresh_updates, updates)
    state = jax.tree.map(lambda f, s: jnp.where(reset, f, s), fresh_state, state)
    return updates, state, reset


def _fresh_lbfgs_update(opt: optax.GradientTransformation, grad: jax.Array, x: jax.Array, lr: float, state):
    """What ``opt.update(grad, opt.init(x), x)`` gives for optax's L-BFGS (learning rate ``lr``,
    no line search), computed without building an empty memory.

    From an empty memory optax's step is −lr · min(1, 1/‖g‖) · g, and its new state holds the
    iterate and the gradient. Here the new state is ``state`` (the one ``opt.update`` just
    returned) with every curvature pair's weight set to zero: a pair of weight zero does not
    enter the two-loop recursion, so the next steps equal those from a fresh memory
    (``tests/test_optimize.py`` checks it against optax), and the m stored pairs (m images) are
    neither copied nor selected. Through ``opt.update(…, opt.init(x), …)`` XLA folds the
    scatter into the empty memory into a constant of that size in the compiled step.
    """
    weights = optax.tree_utils.tree_get(state, "weights_memory")
    fresh = optax.tree_utils.tree_set(
        state, count=jnp.asarray(1, jnp.int32), params=x, updates=grad, weights_memory=jnp.zeros_like(weights)
    )
    return -lr * jnp.minimum(1.0, 1.0 / optax.tree.norm(grad)) * grad, fresh


def _forget(opt_state, batch: int):
    """A batch of L-BFGS states whose next update starts afresh (count 0, every pair weightless),
    keeping the arrays of the stored pairs (see :func:`_fresh_lbfgs_update`)."""
    weights = optax.tree_utils.tree_get(opt_state, "weights_memory")
    return optax.tree_utils.tree_set(
        opt_state, count=jnp.zeros((batch,), jnp.int32), weights_memory=jnp.zeros_like(weights)
    )


# A loss this many times the best one seen so far means the step blew up (L-BFGS without a
# line search can overshoot by orders of magnitude): go back to the best image, drop the
# optimiser's memory and halve the step scale. Ordinary non-monotone steps stay far below it.
RESTART_FACTOR = 10.0
_LBFGS_PAIRS = ("diff_params_memory", "diff_updates_memory")  # optax's stored curvature pairs, (m, H, W, 3) each


class StepState(NamedTuple):
    """Everything that changes from one iteration to the next; a pytree of arrays."""

    image: jax.Array  # (B, H, W, 3) current iterates, RGB, nominally [0, 1] (not clipped)
    opt_state: Any  # the optax state of each image, leaves with a leading (B,) axis
    good: jax.Array  # (B, H, W, 3) the evaluated iterate with the lowest finite loss so far
    best: jax.Array  # (B,) its loss (+inf before the first evaluation)
    scale: jax.Array  # (B,) step scale: 1, halved at each restart after a blow-up
    alive: jax.Array  # (B,) bool: False once an image's loss became NaN/inf (then it is frozen)
    step: jax.Array  # () int32 iterations done
    # OptimConfig.average: (Σ_t d^(T−t) (1 − d) x_t (B, H, W, 3), Σ_t d^(T−t) (1 − d) (B,)), else None
    average: Any = None


def loss_weights(
    loss: losses.PerceptualLoss, batch: int, weights: Mapping[str, Any] | None = None
) -> dict[str, jax.Array]:
    """{"alpha", "beta", "tv_weight"}: each (B,) float32, from ``weights`` or else ``loss``.

    Only magnitudes can vary per image: which terms exist is fixed by ``loss`` (a term whose
    static weight is 0 is not computed at all), so give ``loss`` non-zero α/β for a sweep.
    """
    weights = dict(weights or {})
    unknown = set(weights) - {"alpha", "beta", "tv_weight"}
    if unknown:
        raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; expected alpha, beta, tv_weight")
    out = {}
    for name in ("alpha", "beta", "tv_weight"):
        w = np.broadcast_to(np.asarray(weights.get(name, getattr(loss, name)), np.float32), (batch,))
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"{name} must be finite and >= 0, got {w.tolist()}")
        out[name] = jnp.asarray(w)
    return out


def _broadcast_targets(targets: losses.Targets, batch: int) -> losses.Targets:
    """Give every target leaf a leading (B,) axis so the step can vmap over it."""
    return jax.tree.map(lambda t: t if t.shape[0] == batch else jnp.broadcast_to(t, (batch,) + t.shape[1:]), targets)


def make_step(loss: losses.PerceptualLoss, optim: OptimConfig, memory: str = "plain", tile: int | None = None):
    """Build the jitted ``init`` and ``step`` of the optimisation; ``loss``/``optim`` are static.

    ``memory``/``tile``: how the VGG passes keep their activations (:data:`nstyle.vgg.MEMORY_MODES`,
    :func:`nstyle.losses.perceptual_loss`). Cached on ``(loss, optim, memory, tile)``
    (``optim.steps`` aside), so later runs in the same process with images of the same shapes
    reuse the compiled step.

    Returns ``(init, step)``:

    - ``init(images (B, H, W, 3)) -> StepState``
    - ``step(state, params, targets, weights) -> (state, metrics)``, with ``targets`` leaves
      (B, ...) (see :func:`prepare_targets`) and ``weights`` from :func:`loss_weights`.
      ``metrics`` holds (B,) arrays: ``loss`` (the total at the image the step started from),
      every term of :func:`losses.perceptual_loss`'s ``aux``, ``evals`` (loss+gradient
      evaluations this step) and ``alive``.

    The whole iteration — VGG forward and backward, the optimiser update, the NaN guard — is
    one XLA computation; params and targets are arguments (not baked-in constants), so new
    images of the same shape reuse the compiled step. ``state`` is donated: the step writes the
    new state over the old one (the L-BFGS memory is m images), so the ``state`` passed in is
    deleted after the call; use the one returned.
    """
    if memory not in vgg.MEMORY_MODES:
        raise ValueError(f"unknown memory mode '{memory}' (expected one of {', '.join(vgg.MEMORY_MODES)})")
    return _make_step(loss, dataclasses.replace(optim, steps=0), memory, tile)


def _image_update(
    loss: losses.PerceptualLoss,
    optim: OptimConfig,
    opt: optax.GradientTransformationExtraArgs,
    memory: str = "plain",
    tile: int | None = None,
):
    """``one_image(x, opt_state, scale, targets, weights, params)``: one optimiser iteration of
    ONE image (H, W, 3) -> ``(new x, new opt_state, loss, aux, evals, reset)``; the step vmaps it.
    ``memory``/``tile``: how the VGG passes keep their activations (:data:`nstyle.vgg.MEMORY_MODES`)."""

    def image_loss(x, params, targets, weights):
        """Loss of ONE image: (H, W, 3) -> ((), aux of ()); targets/weights without the batch axis."""
        t = jax.tree.map(lambda a: a[None], targets)  # (1, ...) as perceptual_loss expects
        w = {k: v[None] for k, v in weights.items()}  # (1,)
        total, aux = losses.perceptual_loss(params, x[None], t, loss, weights=w, memory=memory, tile=tile)
        return total[0], {k: v[0] for k, v in aux.items()}

    def one_image(x, opt_state, scale, targets, weights, params):
        """One optimiser iteration for one image -> (new x, new opt_state, loss, aux, evals, reset)."""
        reset = jnp.asarray(False)
        if optim.uses_zoom:
            fn = lambda y: image_loss(y, params, targets, weights)[0]  # noqa: E731
            # the line search evaluated value and gradient at x already; reuse them (evaluate
            # afresh only on the first iteration, where the stored value is +inf)
            fresh = ~jnp.isfinite(optax.tree_utils.tree_get(opt_state, "value"))
            value, grad = optax.value_and_grad_from_state(fn)(x, state=opt_state)
            updates, opt_state = opt.update(grad, opt_state, x, value=value, grad=grad, value_fn=fn)
            evals = fresh.astype(jnp.int32) + optax.tree_utils.tree_get(opt_state, "num_linesearch_steps")
            aux = image_loss(x, params, targets, weights)[1]  # forward only, for the per-term log
        else:
            (value, aux), grad = jax.value_and_grad(image_loss, has_aux=True)(x, params, targets, weights)
            if optim.name == "lbfgs":
                updates, opt_state, reset = lbfgs_update(opt, grad, opt_state, x, optim.learning_rate)
            else:
                updates, opt_state = opt.update(grad, opt_state, x)
            evals = jnp.asarray(1, jnp.int32)
        x = optax.apply_updates(x, jax.tree.map(lambda u: scale * u, updates))
        if optim.project:
            x = jnp.clip(x, 0.0, 1.0)
        return x, opt_state, value, aux, evals, reset

    return one_image


@functools.lru_cache(maxsize=32)
def _make_step(loss: losses.PerceptualLoss, optim: OptimConfig, memory: str, tile: int | None):
    opt = make_optimizer(optim)

    one_image = _image_update(loss, optim, opt, memory, tile)

    @_xla.jit
    def init(images: jax.Array) -> StepState:
        b = images.shape[0]
        average = None
        if optim.average is not None:
            average = (jnp.zeros_like(images), jnp.zeros((b,), images.dtype))
        return StepState(
            image=jnp.copy(images),  # buffers of its own: the state is donated to the step, the images are the caller's
            opt_state=jax.vmap(opt.init)(images),
            good=jnp.copy(images),
            best=jnp.full((b,), jnp.inf, jnp.float32),
            scale=jnp.ones((b,), jnp.float32),
            alive=jnp.ones((b,), bool),
            step=jnp.asarray(0, jnp.int32),
            average=average,
        )

    @_xla.jit(donate_argnums=0)
    def step(
        state: StepState, params: vgg.VGGParams, targets: losses.Targets, weights: Mapping[str, jax.Array]
    ) -> tuple[StepState, dict]:
        new_x, new_opt, value, aux, evals, reset = jax.vmap(one_image, in_axes=(0, 0, 0, 0, 0, None))(
            state.image, state.opt_state, state.scale, targets, weights, params
        )
        ok = state.alive & jnp.isfinite(value) & jnp.all(jnp.isfinite(state.image), axis=(1, 2, 3))  # (B,)
        blowup = ok & (value > RESTART_FACTOR * state.best)  # (B,) restart from the best image
        accept = ok & ~blowup
        improved = ok & (value < state.best)

        def pick(mask, a, b):
            return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

        good = pick(improved, state.image, state.good)
        opt_state = _next_opt_state(optim, opt, pick, accept, blowup, new_opt, state.opt_state, good)
        average = state.average
        if average is not None:  # the evaluated iterate joins the average unless it blew up
            d = optim.average
            total, weight = average
            average = (
                pick(accept, d * total + (1 - d) * state.image, total),
                jnp.where(accept, d * weight + (1 - d), weight),
            )
        new_state = StepState(
            image=pick(accept, new_x, good),  # restarted or frozen images go back to the best one
            opt_state=opt_state,
            good=good,
            best=jnp.where(improved, value, state.best),
            scale=jnp.where(blowup, 0.5 * state.scale, state.scale),
            alive=ok,
            step=state.step + 1,
            average=average,
        )
        metrics = {
            "loss": value,
            **aux,
            "evals": jnp.where(state.alive, evals, 0),
            "alive": ok,
            "restart": blowup,
            "reset": state.alive & reset,
        }
        return new_state, metrics

    return init, step


def _next_opt_state(optim, opt, pick, accept, blowup, new_opt, old, good):
    """Each image's optimiser state after a step: the new one where accepted, a fresh one where
    the image restarts from its best (``blowup``), the old one where frozen."""
    if optim.name == "lbfgs" and not optim.uses_zoom:  # (the zoom search's state holds the last value too)
        # a state that forgets: the restart's first step is a scaled gradient step. The stored
        # pairs are new_opt's in every case (weightless where not accepted), never selected
        # or copied: a frozen image's state is never used again
        fresh = _forget(new_opt, good.shape[0])
        opt_state = jax.tree.map(lambda n, f, o: pick(accept, n, pick(blowup, f, o)), new_opt, fresh, old)
        return optax.tree_utils.tree_set(opt_state, **{k: optax.tree_utils.tree_get(new_opt, k) for k in _LBFGS_PAIRS})
    fresh = jax.vmap(opt.init)(good)
    return jax.tree.map(lambda n, f, o: pick(accept, n, pick(blowup, f, o)), new_opt, fresh, old)


@functools.lru_cache(maxsize=32)
def make_evaluate(loss: losses.PerceptualLoss, memory: str = "plain", tile: int | None = None):
    """Jitted ``evaluate(images (B, H, W, 3), params, targets, weights) -> (total (B,), aux)``."""

    @_xla.jit
    def evaluate(images, params, targets, weights):
        return losses.perceptual_loss(params, images, targets, loss, weights=weights, memory=memory, tile=tile)

    return evaluate


def check_layers(loss: losses.PerceptualLoss, arch: str = "vgg19") -> None:
    """Raise ``ValueError`` naming any layer of ``loss`` that ``arch`` does not have."""
    for kind, layers in (("content", loss.content_layers), ("style", loss.style_layers)):
        for layer in layers:
            try:
                vgg.canonical(layer, arch)
            except ValueError as e:
                raise ValueError(f"{kind} layer: {e}") from None


def prepare_targets(
    params: vgg.VGGParams,
    loss: losses.PerceptualLoss,
    content: jax.Array | None,
    styles: Sequence[Any],
    style_blend: Sequence[float] | None,
    batch: int,
    masks: Any = None,
    style_masks: Sequence[Any] | None = None,
    tile: int | None = None,
) -> losses.Targets:
    """Content responses and blended style statistics, each leaf with a leading (B,) axis.

    ``content`` is (H, W, 3), (B, H, W, 3) or None (then α must be 0); ``styles`` a list of
    (h, w, 3) images, each at its own size (empty when β is 0). Spatial control: ``masks``
    (K, H, W), one region of the output per style image, values in [0, 1]; then style k
    applies in region k only and the styles are not blended. ``style_masks``: per style
    image None or an (h, w) region of it that its statistics are taken over. ``tile``: compute
    them tile by tile (the same values in one tile's memory; :func:`nstyle.vgg.map_tiles`).
    """
    check_layers(loss, params.arch)
    if loss.uses_content and content is None:
        raise ValueError(
            "the loss has a content term (alpha > 0) but no content image was given; "
            "give one, or set alpha=0 for texture synthesis"
        )
    if loss.uses_style and not styles:
        raise ValueError(
            "the loss has a style term (beta > 0) but no style image was given; "
            "give one, or set beta=0 for a content reconstruction"
        )
    c = {}
    if loss.uses_content:
        content = np.asarray(content, np.float32)
        content = content[None] if content.ndim == 3 else content  # (B|1, H, W, 3)
        c = _content_targets(params, content, loss, tile)
    s, layer_masks = {}, None
    smasks = None
    if style_masks is not None:
        if len(style_masks) != len(styles):
            raise ValueError(f"{len(styles)} style images but {len(style_masks)} style masks")
        smasks = tuple(None if m is None else _mask_array(m, np.shape(img)[:2], "style mask") for m, img in
                       zip(style_masks, styles))  # fmt: skip
    if masks is not None and loss.uses_style:
        masks = np.asarray(masks, np.float32)
        if masks.ndim != 3 or masks.shape[0] != len(styles):
            raise ValueError(f"{len(styles)} style images need {len(styles)} masks (K, H, W), got shape {masks.shape}")
        shape = tuple(np.shape(content)[-3:-1]) if content is not None else masks.shape[1:]
        _mask_array(masks[0], shape, "mask")
        if not np.all((masks >= 0) & (masks <= 1)):
            raise ValueError("mask values must lie in [0, 1]")
        layer_masks = {
            k: jnp.asarray(v)
            for k, v in losses.layer_masks(
                np.moveaxis(masks, 0, -1)[None], loss.style_layers, params.arch, loss.pooling
            ).items()
        }  # fmt: skip  {layer: (1, h, w, K)}
    if loss.uses_style:
        blend = losses.blend_weights(style_blend, len(styles))
        images_ = tuple(np.asarray(img, np.float32)[None] for img in styles)
        if smasks is None and layer_masks is None:
            s = _style_targets(params, images_, blend, loss, tile)
        else:
            s = _style_targets_masked(params, images_, blend, smasks, layer_masks is not None, loss)
    return _broadcast_targets(losses.Targets(content=c, style=s, masks=layer_masks), batch)


def _mask_array(mask: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    """A mask as (1, h, w) float32, checked to have the ``shape`` of the image it belongs to."""
    m = np.asarray(mask, np.float32)
    if m.shape != tuple(shape):
        raise ValueError(f"{what} has shape {m.shape}, expected {tuple(shape)} (that of its image)")
    return m[None]


# The targets are computed once per run, each by one compiled call, down to the blend of
# several style images: an eager jnp operation outside would compile a program of its own.
@_xla.jit(static_argnums=(2, 3))
def _content_targets(params, content, loss, tile):
    return losses.content_targets(params, content, loss, tile)


@_xla.jit(static_argnums=(3, 4))
def _style_targets(params, images, blend, loss, tile):
    return losses.style_targets(params, list(images), loss, blend, tile=tile)


@_xla.jit(static_argnums=(4, 5))
def _style_targets_masked(params, images, blend, masks, separate, loss):
    return losses.style_targets(params, list(images), loss, blend, masks=masks, separate=separate)


def initial_images(
    init: str | np.ndarray,
    shape: tuple[int, int],
    batch: int,
    key: jax.Array | None,
    content: np.ndarray | None = None,
    styles: Sequence[np.ndarray] = (),
) -> jax.Array:
    """The starting images (B, H, W, 3).

    ``init``: ``"content"`` (the content image(s), (H, W, 3) or (B, H, W, 3); the default of
    Gatys' own code, pystiche and pastiche: it converges in far fewer steps),
    ``"noise"`` (the paper: uniform white noise in [0, 1], a different draw per image from
    ``key``), ``"style"`` (the first style image resized to the output), or an array
    (H, W, 3) / (B, H, W, 3).
    """
    h, w = shape
    if isinstance(init, str):
        if init == "noise":
            keys = jax.random.split(jax.random.key(0) if key is None else key, batch)
            return jax.vmap(lambda k: jax.random.uniform(k, (h, w, 3), jnp.float32))(keys)  # (B, H, W, 3)
        if init == "content":
            if content is None:
                raise ValueError("init=content needs a content image; use init=noise for texture synthesis")
            arr = np.asarray(content, np.float32)
        elif init == "style":
            if not len(styles):
                raise ValueError("init=style needs a style image")
            from nstyle import images

            arr = images.resize(np.asarray(styles[0], np.float32), (h, w))
        else:
            raise ValueError(f"unknown init '{init}' (expected one of {', '.join(INITS)}, or an image)")
    else:
        arr = np.asarray(init, np.float32)
    arr = arr if arr.ndim == 4 else arr[None]
    if arr.shape[1:] != (h, w, 3):
        raise ValueError(f"initial image has shape {arr.shape[1:]}, expected {(h, w, 3)}")
    return jnp.asarray(np.broadcast_to(arr, (batch, h, w, 3)))  # numpy: no eager JAX op to compile


@dataclasses.dataclass
class BatchResult:
    """What :func:`stylize_batch` returns; per-image values carry a leading (B,) axis."""

    images: np.ndarray  # (B, H, W, 3) float32 in [0, 1]: the best evaluated iterate (lowest finite loss), clipped
    history: dict[str, np.ndarray]  # {term: (T, B)} per iteration, at the image the step started from
    final: dict[str, np.ndarray]  # {term: (B,)} loss terms of the returned images (before the clip); a row of history
    evals: np.ndarray  # (B,) loss+gradient evaluations
    iterations: int  # iterations run (the same for every image; frozen ones stop counting evals)
    stopped_reason: str  # "steps" | "nonfinite" (all images) | "callback" | "interrupted"
    diverged: np.ndarray  # (B,) bool: the image's loss became NaN/inf and it was frozen
    compile_s: float  # compiling the step (once)
    wall_s: float  # iterations only, compile excluded
    restarts: np.ndarray = None  # (B,) restarts after a blow-up (see RESTART_FACTOR)
    resets: np.ndarray = None  # (B,) L-BFGS memory drops after an uphill direction
    opt_state: Any = None  # the optimiser's state after the last step (leaves (B, ...)), for carry_state

    @property
    def evals_per_iter(self) -> np.ndarray:
        return self.evals / max(self.iterations, 1)


@dataclasses.dataclass
class Result:
    """What :func:`stylize` returns for one image."""

    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    history: dict[str, list]  # {term: [value per iteration]}
    final: dict[str, float]
    evals: int
    iterations: int
    stopped_reason: str
    diverged: bool
    compile_s: float
    wall_s: float
    restarts: int = 0  # restarts after a blow-up (see RESTART_FACTOR)
    resets: int = 0  # L-BFGS memory drops after an uphill direction
    opt_state: Any = None  # the optimiser's state after the last step (leaves (1, ...)), for carry_state

    @property
    def evals_per_iter(self) -> float:
        return self.evals / max(self.iterations, 1)


# callback(iteration, state, metrics as numpy (B,) arrays) -> True to stop early
Callback = Callable[[int, StepState, dict], Any]


def _lapack_threads(loss: losses.PerceptualLoss):
    """The W2 loss calls LAPACK's eigh in every step: one BLAS thread (see _xla.single_threaded_lapack)."""
    return _xla.single_threaded_lapack() if loss.style_loss == "w2" else contextlib.nullcontext()


def _with_opt_state(state, opt_state):
    """``state`` starting from a given optimiser state (None: its own fresh one), checked to fit."""
    if opt_state is None:
        return state
    if jax.tree.structure(opt_state) != jax.tree.structure(state.opt_state) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(opt_state), jax.tree.leaves(state.opt_state))
    ):
        raise ValueError("opt_state does not fit this optimiser and image shape; see carry_state")
    # buffers of its own: the state is donated to the step, the given one stays the caller's
    return state._replace(opt_state=jax.tree.map(jnp.copy, opt_state))


def stylize_batch(
    params: vgg.VGGParams,
    loss: losses.PerceptualLoss,
    *,
    content: np.ndarray | None,
    styles: Sequence[np.ndarray] = (),
    style_blend: Sequence[float] | None = None,
    weights: Mapping[str, Any] | None = None,
    batch: int | None = None,
    shape: tuple[int, int] | None = None,
    init: str | np.ndarray = "content",
    key: jax.Array | None = None,
    optim: OptimConfig = OptimConfig(),
    callback: Callback | None = None,
    memory: str = "plain",
    tile: int | None = None,
    masks: Any = None,
    style_masks: Sequence[Any] | None = None,
    opt_state: Any = None,
    mesh: Mesh | None = None,
) -> BatchResult:
    """Optimise B images at once, each independently, with per-image loss weights.

    Args:
      params: VGG weights (:func:`nstyle.weights.load`).
      loss: layers and default weights; static.
      content: (H, W, 3) shared by all images, (B, H, W, 3) one per image, or None for
        texture synthesis (then give ``shape``).
      styles: style images (h, w, 3), each at the size it should be seen at (style scale).
      style_blend: one weight per style image (normalised to sum 1); default equal.
      weights: optional ``{"alpha"|"beta"|"tv_weight": (B,)}`` per-image weights.
      batch: B; default from ``weights``, ``content`` or 1.
      shape: (H, W) of the output when there is no content image.
      init: ``"content"``, ``"noise"``, ``"style"`` or an image; see :func:`initial_images`.
      key: PRNG key (used by ``init="noise"``); default ``jax.random.key(0)``.
      optim: the optimiser.
      callback: called after every iteration as ``callback(i, state, metrics)`` with numpy
        metrics; returning True stops the run (``stopped_reason="callback"``).
      memory: how the VGG passes keep their activations: ``"plain"`` (fastest), ``"remat"``, ``"tiled"`` (the
        same result in less memory) or ``"remat_bf16"``; see :func:`nstyle.memory.choose`.
      tile: the tiled mode's tile side in px (default :data:`nstyle.vgg.DEFAULT_TILE`); its
        targets are computed tile by tile too.
      masks: spatial control, (K, H, W) in [0, 1]: style image k applies in region k of the
        output only (see :func:`prepare_targets`); ``style_blend`` is then unused. Not with
        the tiled memory mode.
      style_masks: per style image None or an (h, w) region of it to take its style from.
      opt_state: the optimiser's state to start from (leaves (B, ...)), e.g. the previous
        stage's carried over by :func:`carry_state`; default a fresh one. Not with ``mesh``.
      mesh: split the batch over this mesh's devices (:func:`nstyle.distributed.make_mesh`);
        the VGG weights are replicated. The batch is padded to a multiple of the device count
        with copies of its last image, which the result leaves out. In a multi-process run
        every process calls this with the same arguments and gets the whole result. None:
        JAX's default device.

    A KeyboardInterrupt stops the loop and returns what was reached (``stopped_reason="interrupted"``).
    """
    _check_combination(loss, memory, masks, opt_state, mesh)
    with _lapack_threads(loss):
        batch, shape = _batch_and_shape(content, weights, batch, shape)
        w = loss_weights(loss, batch, weights)
        target_tile = (tile or vgg.DEFAULT_TILE) if memory == "tiled" else None
        targets = prepare_targets(params, loss, content, styles, style_blend, batch, masks, style_masks, target_tile)
        _xla.release_host_memory()  # what compiling the targets' programs freed, before the step compiles
        params = vgg.with_backward_kernels(params, loss.layers)  # once per run, not in every step's backward pass
        x0 = initial_images(init, shape, batch, key, content=content, styles=styles)
        if mesh is not None:
            x0, targets, w, params = _split(mesh, batch, x0, targets, w, params)

        init_fn, step_fn = make_step(loss, optim, memory, tile)
        state = _with_opt_state(init_fn(x0), opt_state)
        compile_s = _compile(step_fn, state, params, targets, w)

        t0 = time.perf_counter()
        state, loop = _run_loop(step_fn, state, (params, targets, w), optim.steps, callback)
        wall_s = time.perf_counter() - t0
        evaluate = lambda x: make_evaluate(loss, memory, tile)(x, params, targets, w)  # noqa: E731
        images, final, diverged = _best_iterates(state, loop.history, evaluate)
        if state.average is not None:
            images, final = _averaged(state, images, final, evaluate)
    return _batch_result(batch, images, final, diverged, loop, optim, compile_s, wall_s, state.opt_state)


def _check_combination(loss, memory: str, masks, opt_state, mesh) -> None:
    if mesh is not None and opt_state is not None:
        raise ValueError("opt_state (a carried optimiser state) is not supported with a mesh")
    if memory == "tiled" and not losses.tiled_supported(loss, masks is not None):
        raise ValueError("the tiled memory mode computes Gram style losses without masks only")


def _compile(step_fn, *args) -> float:
    """Compile the step once, timed on its own (jit reuses it); then hand the compiler's freed
    memory back before the step allocates its own. Returns the seconds it took."""
    t0 = time.perf_counter()
    step_fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    _xla.release_host_memory()
    return compile_s


def _batch_result(batch, images, final, diverged, loop, optim, compile_s, wall_s, opt_state) -> BatchResult:
    """The run's :class:`BatchResult`, without the padding of a split batch (rows from ``batch`` on)."""
    reason = loop.reason
    if reason == "steps" and diverged[:batch].all() and optim.steps > 0:
        reason = "nonfinite"
    return BatchResult(
        images=images[:batch],
        history={k: v[:, :batch] for k, v in loop.history.items()},
        final={k: v[:batch] for k, v in final.items()},
        evals=loop.evals[:batch],
        iterations=loop.iterations if optim.steps else 0,
        stopped_reason=reason,
        diverged=diverged[:batch],
        compile_s=compile_s,
        wall_s=wall_s,
        restarts=loop.restarts[:batch],
        resets=loop.resets[:batch],
        opt_state=opt_state,
    )


def _split(mesh: Mesh, batch: int, x0, targets, w, params):
    """The run's arrays on ``mesh``: the batch padded to a multiple of its devices and split, the weights replicated."""
    padded = -(-batch // mesh.size) * mesh.size
    split = distributed.batch_sharding(mesh)
    x0, targets, w = (distributed.put(_pad_batch(t, padded), split) for t in (x0, targets, w))
    return x0, targets, w, distributed.put(params, distributed.replicated(mesh))


def _averaged(state: StepState, best: np.ndarray, best_final: dict, evaluate):
    """The iterate average as the result, with its loss terms evaluated (one evaluation): per
    image, unless no iterate entered the average or its loss is not finite (then the best
    iterate stays). Returns ``(images (B, H, W, 3), final {term: (B,)})``."""
    total, weight = (np.asarray(a) for a in state.average)
    have = weight > 0  # (B,)
    if not have.any():
        return best, best_final
    mean = total / np.where(have, weight, 1.0)[:, None, None, None]  # (B, H, W, 3) bias-corrected
    value, aux = evaluate(jnp.asarray(mean))
    terms = {"loss": np.asarray(value, np.float64), **{k: np.asarray(v, np.float64) for k, v in aux.items()}}
    use = have & np.isfinite(terms["loss"])
    images = np.where(use[:, None, None, None], np.clip(mean, 0.0, 1.0), best).astype(np.float32)
    final = {k: np.where(use, terms[k], v) if k in terms else v for k, v in best_final.items()}
    return images, final


def carry_state(optim: OptimConfig, opt_state: Any, shape: tuple[int, int]) -> Any:
    """The optimiser's state of one stage for the next, larger one, or None to start afresh.

    Adam's moments are images (B, H, W, 3) like the pixels: resized (bilinear) to ``shape``,
    its step count kept, so the next stage goes on at the pace it had. L-BFGS's memory holds
    differences of iterates and gradients at the old size, which no resize turns into
    curvature pairs of the new one: it restarts (None).
    """
    if optim.name != "adam" or opt_state is None:
        return None

    def resize(a):
        a = jnp.asarray(a)
        if a.ndim == 4:  # (B, H, W, 3)
            return jax.image.resize(a, (a.shape[0], *shape, a.shape[-1]), "linear")
        return a

    return jax.tree.map(resize, opt_state)


def _pad_batch(tree, n: int):
    """Leaves (B, ...) -> numpy (n, ...), the last row repeated (n >= B)."""

    def one(a):
        a = np.asarray(a)
        return a if a.shape[0] == n else np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)])

    return jax.tree.map(one, tree)


def _batch_and_shape(content, weights, batch, shape) -> tuple[int, tuple[int, int]]:
    """B (given, else from ``weights``, ``content`` or 1) and the output's (H, W)."""
    if batch is None:
        sizes = [np.size(v) for v in (weights or {}).values()]
        if content is not None and np.ndim(content) == 4:
            sizes.append(np.shape(content)[0])
        batch = max(sizes + [1])
    if content is not None:
        shape = tuple(np.shape(content)[-3:-1])
    elif shape is None:
        raise ValueError("without a content image, give the output shape (H, W)")
    return int(batch), (int(shape[0]), int(shape[1]))


class _Loop(NamedTuple):
    history: dict[str, np.ndarray]  # {term: (T, B)}
    evals: np.ndarray  # (B,)
    restarts: np.ndarray  # (B,)
    resets: np.ndarray  # (B,)
    iterations: int
    reason: str  # "steps" | "nonfinite" | "callback" | "interrupted"


_COUNTERS = ("evals", "alive", "restart", "reset")  # per-step metrics that are not loss terms


def _run_loop(step_fn, state: StepState, args: tuple, steps: int, callback: Callback | None) -> tuple[StepState, _Loop]:
    """Up to ``steps`` iterations of ``step_fn(state, *args)``, recording every loss term."""
    batch = state.best.shape[0]
    hist: dict[str, list] = {}
    evals, restarts, resets = (np.zeros((batch,), np.int64) for _ in range(3))
    reason, it = "steps", 0
    try:
        for it in range(1, steps + 1):
            state, m = step_fn(state, *args)
            m = distributed.gather(m)  # (B,) each; several processes: every one gets all of them
            evals += m["evals"]
            restarts += m["restart"]
            resets += m["reset"]
            for k, v in m.items():
                if k not in _COUNTERS:
                    hist.setdefault(k, []).append(np.asarray(v, np.float64))
            if not m["alive"].any():
                reason = "nonfinite"
                break
            if callback is not None and callback(it, state, m):
                reason = "callback"
                break
    except KeyboardInterrupt:
        if any(leaf.is_deleted() for leaf in jax.tree.leaves(state)):
            raise  # it came while the step took the state over (it is donated): there is no state to return
        reason = "interrupted"
    jax.block_until_ready(state.image)
    history = {k: np.stack(v) if v else np.zeros((0, batch)) for k, v in hist.items()}
    return state, _Loop(history, evals, restarts, resets, it, reason)


def _best_iterates(state: StepState, history: dict[str, np.ndarray], evaluate):
    """Each image's best evaluated iterate (``state.good``), clipped, with the loss terms the
    history recorded at it: ``(images (B, H, W, 3), final {term: (B,)}, diverged (B,))``.

    N steps are N evaluations: the last step's proposal, never evaluated, is not taken, and
    nothing is evaluated after the loop. With no step run (steps=0, or interrupted at once)
    the starting images are evaluated by ``evaluate(images) -> (total, aux)``.
    """
    batch = state.best.shape[0]
    diverged = ~distributed.gather(state.alive)
    if len(history.get("loss", ())):
        total = history["loss"]  # (T, B)
        row = np.argmin(np.where(np.isfinite(total), total, np.inf), axis=0)  # the first minimum, as the step's "<"
        final = {k: v[row, np.arange(batch)] for k, v in history.items()}
        last = state.good
    else:
        last = state.image
        total, aux = distributed.gather(evaluate(last))
        final = {"loss": np.asarray(total, np.float64), **{k: np.asarray(v, np.float64) for k, v in aux.items()}}
        diverged = ~np.isfinite(final["loss"])
    return np.clip(distributed.gather(last).astype(np.float32), 0.0, 1.0), final, diverged


def stylize(
    params: vgg.VGGParams,
    loss: losses.PerceptualLoss,
    *,
    content: np.ndarray | None,
    styles: Sequence[np.ndarray] = (),
    style_blend: Sequence[float] | None = None,
    shape: tuple[int, int] | None = None,
    init: str | np.ndarray = "content",
    key: jax.Array | None = None,
    optim: OptimConfig = OptimConfig(),
    callback: Callback | None = None,
    memory: str = "plain",
    tile: int | None = None,
    masks: Any = None,
    style_masks: Sequence[Any] | None = None,
    opt_state: Any = None,
) -> Result:
    """Optimise one image; see :func:`stylize_batch` for the arguments.

    Content-only reconstruction: ``loss`` with β=0 and ``styles=[]``; texture synthesis:
    α=0, ``content=None``, ``shape=(H, W)``, ``init="noise"``.
    """
    if content is not None and np.ndim(content) != 3:
        raise ValueError(f"content must be one (H, W, 3) image, got shape {np.shape(content)}; use stylize_batch")
    r = stylize_batch(
        params,
        loss,
        content=content,
        styles=styles,
        style_blend=style_blend,
        batch=1,
        shape=shape,
        init=init,
        key=key,
        optim=optim,
        callback=callback,
        memory=memory,
        tile=tile,
        masks=masks,
        style_masks=style_masks,
        opt_state=opt_state,
    )
    return Result(
        image=r.images[0],
        history={k: v[:, 0].tolist() for k, v in r.history.items()},
        final={k: float(v[0]) for k, v in r.final.items()},
        evals=int(r.evals[0]),
        iterations=r.iterations,
        stopped_reason=r.stopped_reason,
        diverged=bool(r.diverged[0]),
        compile_s=r.compile_s,
        wall_s=r.wall_s,
        restarts=int(r.restarts[0]),
        resets=int(r.resets[0]),
        opt_state=r.opt_state,
    )
