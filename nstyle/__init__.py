"""nstyle: neural style transfer in JAX (Gatys et al. pixel optimisation, Johnson et al. FastNet)."""

from nstyle import losses, vgg, weights

__version__ = "0.1.0"
__all__ = ["losses", "vgg", "weights", "__version__"]
