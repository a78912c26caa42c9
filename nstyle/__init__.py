"""nstyle: neural style transfer in JAX (Gatys et al. pixel optimisation, Johnson et al. FastNet).

    params = nstyle.weights.load("vgg19")                       # real ImageNet VGG19 (Caffe)
    feats = nstyle.vgg.features(params, images, layers=("conv1_1", "conv4_2"), pooling="avg")
    res = nstyle.optimize.stylize(params, nstyle.PerceptualLoss(), content=c, styles=[s])
    cfg, net_params, meta = nstyle.fastnet.load_model("model.npz")

The public API is what this module names below; ``docs/architecture.md`` maps the parts.
The command-line tools live in :mod:`nstyle.cli`, which this package never imports.
"""

from nstyle import (
    color,
    data,
    distributed,
    fastnet,
    images,
    losses,
    lpips,
    memory,
    metrics,
    optimize,
    runinfo,
    train,
    transfer,
    vgg,
    weights,
)
from nstyle._errors import UserError
from nstyle.fastnet import FastNetConfig, load_model
from nstyle.images import load_image, save_image
from nstyle.losses import PerceptualLoss, perceptual_loss
from nstyle.lpips import lpips_distance
from nstyle.optimize import OptimConfig, stylize, stylize_batch
from nstyle.train import TrainConfig
from nstyle.transfer import TransferSettings
from nstyle.vgg import features

__version__ = "0.2.0"

__all__ = [
    # modules
    "color",
    "data",
    "distributed",
    "fastnet",
    "images",
    "losses",
    "lpips",
    "memory",
    "metrics",
    "optimize",
    "runinfo",
    "train",
    "transfer",
    "vgg",
    "weights",
    # names
    "FastNetConfig",
    "OptimConfig",
    "PerceptualLoss",
    "TrainConfig",
    "TransferSettings",
    "UserError",
    "features",
    "load_image",
    "load_model",
    "lpips_distance",
    "perceptual_loss",
    "save_image",
    "stylize",
    "stylize_batch",
    "__version__",
]
