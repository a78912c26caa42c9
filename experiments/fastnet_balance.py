"""How the FastNet loss balance moves with the crop size, under each ``loss.normalize``.

    python -m experiments.fastnet_balance style=[a.jpg,b.jpg] data=photos/ [sizes=[64,128,256,512]] \
        [photos=16] [--out DIR]

A training run trades the content term against the style term. What sets the trade-off is
the style term of the untouched photo (the loss a network pays for returning its input)
measured in units of the content term's natural size (the content loss of a zero response,
½ΣP², which ``loss.normalize=true`` divides by). This script computes that ratio for the
default loss weights of each normalisation, at each crop size, for the first ``photos``
images of ``data`` (central square crops) against each painting (resized like the
training does: longest side = the crop size):

- ``none``  (MSE units, content 1e5, style 1e10, the PyTorch example's): the ratio is
  1e10 Σ_l mean((G_l − A_l)²) / (1e5 mean(P²)), with G = F Fᵀ/(N M);
- ``target`` (the default): Σ_l ‖G_l/M − Â_l‖² / ‖Â_l‖², per layer and summed, times the
  default style weight; the content unit is 1 by construction.

If the ratio stays put across sizes, one set of weights gives the same balance at any crop
size. Writes ``fastnet_balance.csv`` / ``.md`` to ``--out`` and prints the table; it runs VGG16
forward passes only (a minute on a CPU). docs/fastnet.md quotes a run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MSE_WEIGHTS = (1e5, 1e10)  # PyTorch fast_neural_style's content and style weights (MSE units)


def center_square(image: np.ndarray, side: int) -> np.ndarray:
    from nstyle import images

    h, w = image.shape[:2]
    m = min(h, w)
    crop = image[(h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
    return images.resize(crop, (side, side))


def balance(params, photos: np.ndarray, style: np.ndarray, loss, style_weight: float) -> dict:
    """The ratios of the module docstring for a batch of photos (B, s, s, 3) and one painting."""
    import jax.numpy as jnp

    from nstyle import losses, vgg

    fx = vgg.features(params, jnp.asarray(photos), loss.layers, loss.pooling)
    fs = vgg.features(params, jnp.asarray(style[None]), loss.style_layers, loss.pooling)
    p = np.asarray(fx[loss.content_layers[0]], np.float64)  # (B, h, w, N)
    row = {"content_mse_unit": MSE_WEIGHTS[0] * float(np.mean(p**2))}
    style_mse, style_rel = 0.0, 0.0
    for layer in loss.style_layers:
        n = fs[layer].shape[-1]
        a = np.asarray(losses.mean_gram(fs[layer]), np.float64)[0]  # (N, N) Â
        g = np.asarray(losses.mean_gram(fx[layer]), np.float64)  # (B, N, N)
        style_mse += MSE_WEIGHTS[1] * float(np.mean(np.mean(((g - a) / n) ** 2, axis=(1, 2))))
        rel = float(np.mean(np.sum((g - a) ** 2, axis=(1, 2)) / np.sum(a**2)))
        row[f"rel_{layer}"] = rel
        style_rel += style_weight * rel
    row.update(style_mse=style_mse, ratio_none=style_mse / row["content_mse_unit"], ratio_target=style_rel)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="style=PATH or style=[a,b]; data=DIR; sizes=[...]; photos=N")
    ap.add_argument("--out", default="outputs/fastnet_balance")
    args = ap.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    opts = dict(o.partition("=")[::2] for o in args.overrides)
    if "style" not in opts or "data" not in opts:
        raise SystemExit("give style=PATH (or style=[a,b]) and data=DIR")
    styles = [s for s in opts["style"].strip("[]").split(",") if s]
    sizes = [int(s) for s in opts.get("sizes", "[64,128,256,512]").strip("[]").split(",")]

    from nstyle import _io, data, images, train, weights

    defaults = train.TrainLoss()
    params = weights.load(defaults.network)
    loss, _ = train.perceptual_loss_for(defaults, 64, params)
    folder = data.ImageFolder.scan(opts["data"])
    originals = [images.load_image(folder.path(i)) for i in range(min(int(opts.get("photos", 16)), len(folder)))]
    rows = []
    for style_path in styles:
        for size in sizes:
            photos = np.stack([center_square(im, size) for im in originals])  # (B, s, s, 3)
            style = images.load_image(style_path, max_side=size)
            row = {
                "style": Path(style_path).stem,
                "size": size,
                **balance(params, photos, style, loss, defaults.style_weight),
            }
            rows.append(row)
            print(
                f"{row['style']:>20s} {size:4d} px  none: {row['ratio_none']:7.2f}  target: {row['ratio_target']:5.2f} "
                + " ".join(f"{k[4:]} {v:.2f}" for k, v in row.items() if k.startswith("rel_")),
                flush=True,
            )
    fields = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _io.write_text(
        out / "fastnet_balance.csv",
        "\n".join([",".join(fields)] + [",".join(fmt(r[k]) for k in fields) for r in rows]) + "\n",
    )
    md = ["| " + " | ".join(fields) + " |", "|" + " --- |" * len(fields)]
    md += ["| " + " | ".join(fmt(r[k]) for k in fields) + " |" for r in rows]
    for name in ("ratio_none", "ratio_target"):
        spread = [max(r[name] for r in rows if r["style"] == s) / min(r[name] for r in rows if r["style"] == s)
                  for s in dict.fromkeys(r["style"] for r in rows)]  # fmt: skip
        md.append(f"\n{name}: largest / smallest over the sizes, per painting: {', '.join(f'{x:.2f}' for x in spread)}")
    _io.write_text(out / "fastnet_balance.md", "\n".join(md) + "\n")
    print(md[-2] + md[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
