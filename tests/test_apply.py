"""nstyle-apply: one image, a folder, any size; metadata; refusals with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from nstyle import color, fastnet, images
from nstyle.cli import apply

ROOT = Path(__file__).resolve().parent.parent
NET = fastnet.FastNetConfig(width=4, blocks=1, output="linear")  # an untrained residual net is the identity


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    params = fastnet.init(NET, jax.random.key(0))
    path = d / "model.npz"
    fastnet.export_model(path, NET, params, {"checkpoint": "ckpt_00000040.npz", "style": "builtin:coffee"})
    return path, params


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    img = images.load_image("builtin:chelsea", max_side=50)  # 50×33: not a multiple of 4
    return images.save_image(d / "cat.png", img), img


def test_one_image_any_size_with_metadata(tmp_path, model, photo):
    src, img = photo
    out = tmp_path / "cat_styled.png"
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={out}"]) == 0
    result = images.load_image(out)
    assert result.shape == img.shape
    # the written result is the network's output (to 8-bit rounding)
    want = np.asarray(fastnet.stylize(NET, model[1], images.load_image(src)[None]))[0]  # the 8-bit file as read
    np.testing.assert_allclose(result, want, atol=1 / 255 + 1e-6)
    meta = json.loads((tmp_path / "cat_styled.png.json").read_text())
    assert meta["checkpoint"] == "ckpt_00000040.npz" and meta["model"] == str(model[0].resolve())
    assert len(meta["model_sha256"]) == 64 and meta["images"][0]["size"] == [33, 50]


@pytest.fixture(scope="module")
def multi_model(tmp_path_factory):
    """A 3-style model whose styles differ (each conditional norm's rows perturbed)."""
    cfg = fastnet.FastNetConfig(width=4, blocks=1, styles=3, output="linear")
    params = fastnet.init(cfg, jax.random.key(0))
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: (
            v + 0.5 * jax.random.normal(jax.random.key(len(str(path))), v.shape)
            if "ConditionalInstanceNorm" in str(path)
            else v
        ),
        params,
    )
    path = tmp_path_factory.mktemp("multi") / "three.npz"
    fastnet.export_model(path, cfg, params, {"styles": ["a.jpg", "b.jpg", "c.jpg"]})
    return path, cfg, params


def test_style_weights_pick_or_mix_the_styles_of_a_multi_style_model(tmp_path, multi_model, photo):
    src, _ = photo
    x = images.load_image(src)[None]
    path, cfg, params = multi_model
    for name, weights, want in [
        ("b.png", "[0,1,0]", np.array([0.0, 1.0, 0.0])),
        ("mix.png", "[1,1,0]", np.array([0.5, 0.5, 0.0])),  # normalised to sum 1
    ]:
        out = tmp_path / name
        assert apply.main([f"model={path}", f"input={src}", f"output={out}", f"style_weights={weights}"]) == 0
        expected = np.asarray(fastnet.stylize(cfg, params, x, want))[0]
        np.testing.assert_allclose(images.load_image(out), expected, atol=1 / 255 + 1e-6)
        assert json.loads((tmp_path / f"{name}.json").read_text())["style_weights"] == want.tolist()
    assert np.mean(np.abs(images.load_image(tmp_path / "b.png") - images.load_image(tmp_path / "mix.png"))) > 0.01


def test_preserve_color_keeps_the_photos_colours(tmp_path, model, photo):
    src, _ = photo
    img = images.load_image(src)
    plain, lum, hist = tmp_path / "plain.png", tmp_path / "lum.png", tmp_path / "hist.png"
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={plain}"]) == 0
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={lum}", "preserve_color=luminance"]) == 0
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={hist}", "preserve_color=histogram"]) == 0
    plain, lum, hist = (images.load_image(p) for p in (plain, lum, hist))
    # luminance: the result's Y with the photo's I and Q (where no channel was clipped)
    yiq_l, yiq_p = color.rgb_to_yiq(lum.astype(np.float64)), color.rgb_to_yiq(img.astype(np.float64))
    inside = np.all((lum > 2 / 255) & (lum < 253 / 255), axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(yiq_l[..., 0][inside], color.luminance(plain)[inside], atol=3 / 255)
    np.testing.assert_allclose(yiq_l[..., 1:][inside], yiq_p[..., 1:][inside], atol=3 / 255)
    # histogram: the result's colour mean and covariance are the photo's
    flat = lambda a: a.reshape(-1, 3).astype(np.float64)  # noqa: E731
    assert np.abs(flat(hist).mean(0) - flat(img).mean(0)).max() < 0.02
    np.testing.assert_allclose(np.cov(flat(hist), rowvar=False), np.cov(flat(img), rowvar=False), atol=3e-3)
    assert np.abs(flat(plain).mean(0) - flat(img).mean(0)).max() > 0.02  # (the untrained net changes them)


def test_folder_in_folder_out_skips_unreadable(tmp_path, model, photo):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    images.save_image(src / "a.jpg", images.load_image("builtin:coffee", max_side=40))
    images.save_image(src / "sub" / "b.png", images.load_image("builtin:astronaut", max_side=36))
    (src / "bad.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "styled"
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={out}", "max_side=32"]) == 0
    h, w = images.load_image(src / "a.jpg").shape[:2]
    assert images.load_image(out / "a.jpg").shape[:2] == (round(h * 32 / w), 32)  # resized to max_side first
    assert (out / "sub" / "b.png").exists()
    meta = json.loads((out / "nstyle-apply.json").read_text())
    assert len(meta["images"]) == 2 and len(meta["skipped"]) == 1 and "bad.png" in meta["skipped"][0]["input"]


def test_refusals(tmp_path, model, multi_model, photo, capsys):
    src, _ = photo
    multi, out = multi_model[0], f"output={tmp_path / 'o.png'}"
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep me")
    not_model = tmp_path / "weights.npz"
    np.savez(not_model, x=np.zeros(2))
    cases = [
        ([f"model={model[0]}", f"input={src}", f"output={existing}"], "already exists"),
        ([f"model={not_model}", f"input={src}", f"output={tmp_path / 'o.png'}"], "not an nstyle FastNet model"),
        ([f"model={model[0]}", f"input={tmp_path / 'nope.jpg'}", f"output={tmp_path / 'o.png'}"], "does not exist"),
        ([f"model={model[0]}", f"input={src}", f"output={tmp_path / 'o.xyz'}"], "cannot write images"),
        ([f"model={model[0]}", f"input={src}"], "missing output"),
        ([f"modle={model[0]}", f"input={src}", f"output={tmp_path / 'o.png'}"], "unknown argument"),
        ([f"model={model[0]}", f"input={src}", out, "preserve_color=yes"], "must be one"),
        ([f"model={model[0]}", f"input={src}", out, "style_weights=[1,x]"], "numbers"),
        ([f"model={model[0]}", f"input={src}", out, "style_weights=[1,1]"], "one style"),
        ([f"model={multi}", f"input={src}", out], "holds 3 styles (a.jpg, b.jpg"),
        ([f"model={multi}", f"input={src}", out, "style_weights=[1,0]"], "has 2 weights but"),
        ([f"model={multi}", f"input={src}", out, "style_weights=[0,0,0]"], "not all zero"),
    ]
    for args, words in cases:
        assert apply.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert existing.read_bytes() == b"keep me"  # never overwritten
    assert not (tmp_path / "o.png").exists()


def test_console_script_exit_code_and_no_traceback(tmp_path, photo):
    src, _ = photo
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from nstyle.cli.apply import main; sys.exit(main())",
            f"model={tmp_path / 'missing.npz'}",
            f"input={src}",
            f"output={tmp_path / 'o.png'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("nstyle-apply: error:") and "no such model file" in r.stderr


def test_tiled_when_asked_or_when_the_image_does_not_fit(tmp_path, model):
    """tile=N runs tile by tile (the same pixels as untiled, to 8-bit rounding, for an image whose
    statistics come from the image itself); tile=auto tiles when the budget is too small for one
    pass; tile=off then refuses, before decoding, naming the max_side that would fit."""
    from nstyle import fastnet

    src = images.save_image(tmp_path / "big.png", images.load_image("builtin:astronaut", max_side=120))
    plain, tiled = tmp_path / "plain.png", tmp_path / "tiled.png"
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={plain}"]) == 0
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={tiled}", "tile=32"]) == 0
    np.testing.assert_allclose(images.load_image(tiled), images.load_image(plain), atol=1 / 255 + 1e-6)
    assert json.loads((tmp_path / "tiled.png.json").read_text())["images"][0]["tile"] == 32

    # a budget between what one tile and what the whole image needs
    whole = fastnet.plan_inference(NET, 120, 120, 10**12).bytes
    budget_gb = (whole - fastnet.inference_bytes(NET, 120, 120) // 2) / 2**30
    auto = tmp_path / "auto.png"
    assert apply.main([f"model={model[0]}", f"input={src}", f"output={auto}", f"max_memory_gb={budget_gb}"]) == 0
    assert json.loads((tmp_path / "auto.png.json").read_text())["images"][0]["tile"] is not None


def test_memory_is_checked_before_the_image_is_decoded(tmp_path, model, photo, capsys, monkeypatch):
    src, _ = photo
    decoded = []
    monkeypatch.setattr(images, "load_image", lambda *a, **k: decoded.append(a) or np.zeros((2, 2, 3)))
    cases = [
        (["max_side=100000"], "max_side="),  # 100000×66000 px: the image alone exceeds the budget
        (["max_side=3000", "tile=off"], "tile=auto"),
    ]
    for extra, words in cases:
        out = tmp_path / "o.png"
        args = [f"model={model[0]}", f"input={src}", f"output={out}", "max_memory_gb=1", *extra]
        assert apply.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would fit" in err[0] and words in err[0], err
        assert not out.exists()
    assert not decoded
