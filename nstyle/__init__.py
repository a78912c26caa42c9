"""nstyle: neural style transfer in JAX (Gatys et al. pixel optimisation, Johnson et al. FastNet).

    params = nstyle.weights.load("vgg19")                       # real ImageNet VGG19 (Caffe)
    feats = nstyle.vgg.features(params, images, layers=("conv1_1", "conv4_2"), pooling="avg")
    total, aux = nstyle.losses.perceptual_loss(params, images, targets, nstyle.losses.PerceptualLoss())
"""

from nstyle import losses, lpips, vgg, weights

__version__ = "0.1.0"
__all__ = ["losses", "lpips", "vgg", "weights", "__version__"]
