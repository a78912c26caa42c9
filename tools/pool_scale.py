"""Measure ``nstyle.vgg.AVG_POOL_SCALE``: per pooling stage, how much larger the mean activation
is after max pooling than after average pooling.

    python tools/pool_scale.py            # prints the table to paste into nstyle/vgg.py

Stage by stage: the network runs with the scales found so far (``avg_rescaled``), and the
input of pool k is pooled both ways; the scale of stage k is mean(max pool) / mean(average
pool) over the calibration images. Rescaling one stage at a time accounts for what the earlier
rescaled stages did to the activations that reach the next.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from nstyle import images, vgg, weights

CALIBRATION = ("builtin:astronaut", "builtin:chelsea", "builtin:coffee", "builtin:rocket")
SIZE = 256


def scales(arch: str) -> tuple[float, ...]:
    params = weights.load(arch)
    batch = [images.load_image(spec, SIZE) for spec in CALIBRATION]
    found = [1.0] * 5
    last_convs = [c for i, c in enumerate(vgg.ARCH_LAYERS[arch]) if i + 1 == len(vgg.ARCH_LAYERS[arch])
                  or vgg.ARCH_LAYERS[arch][i + 1][4] != c[4]]  # fmt: skip
    for k, layer in enumerate(last_convs):
        vgg.AVG_POOL_SCALE[arch] = tuple(found)
        ratios = []
        for x in batch:
            f = vgg.features(params, jnp.asarray(x[None]), (layer,), "avg_rescaled")[layer]  # input of pool k+1
            mx = vgg._pool(f, "max")
            av = vgg._pool(f, "avg")
            ratios.append(float(jnp.mean(mx)) / float(jnp.mean(av)))
        found[k] = float(np.mean(ratios))
    return tuple(round(s, 3) for s in found)


def main() -> None:
    for arch in ("vgg19", "vgg16"):
        print(f'    "{arch}": {scales(arch)},')


if __name__ == "__main__":
    main()
