"""nstyle-apply: one image, a folder, any size; metadata; refusals with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from nstyle import fastnet, images
from nstyle.cli import apply

ROOT = Path(__file__).resolve().parent.parent
NET = fastnet.FastNetConfig(width=4, blocks=1)


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


def test_refusals(tmp_path, model, photo, capsys):
    src, _ = photo
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
