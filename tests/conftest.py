"""Fixtures shared by the test modules: the real VGG19 weights and small built-in images."""

import pytest


@pytest.fixture(scope="session")
def vgg19():
    """The cached VGG19 (Caffe) weights, loaded once per session."""
    from nstyle import weights

    return weights.load("vgg19")


@pytest.fixture(scope="session")
def small_images():
    """{"content": chelsea, "style": ihc}, (H, W, 3) float32, longest side 48 px."""
    from nstyle import images

    return {"content": images.load_image("builtin:chelsea", 48), "style": images.load_image("builtin:ihc", 48)}


@pytest.fixture(scope="session")
def tiny(small_images):
    """32 px versions of the shared images: (21, 32, 3) content, (32, 32, 3) style."""
    from nstyle import images

    return {
        "content": images.resize_longest(small_images["content"], 32),
        "style": images.resize(small_images["style"], (32, 32)),
    }
