"""nstyle's compile options: Eigen convolutions on the CPU by default, XLA's own on request."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import _xla


def _conv_sum(x, w):
    return jnp.sum(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))


def _hlo(fn):
    x, w = jnp.ones((1, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
    return fn.lower(x, w).compile().as_text()


def test_default_cpu_compiles_without_ynn_fusions(monkeypatch):
    monkeypatch.delenv(_xla.CONV_ENV, raising=False)
    assert jax.default_backend() == "cpu"
    assert _xla.compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert "__ynn_fusion" in _hlo(jax.jit(_conv_sum))  # XLA's default on this jaxlib: a YNNPACK fusion
    assert "__ynn_fusion" not in _hlo(_xla.jit(_conv_sum))  # nstyle's: Eigen
    # same value either way
    x, w = jnp.linspace(0, 1, 16 * 16 * 8).reshape(1, 16, 16, 8), jnp.ones((3, 3, 8, 8)) * 0.1
    assert float(_xla.jit(_conv_sum)(x, w)) == pytest.approx(float(jax.jit(_conv_sum)(x, w)), rel=1e-6)


def test_env_switches_back_to_xla_default(monkeypatch):
    monkeypatch.setenv(_xla.CONV_ENV, "xla")
    assert _xla.compiler_options() == {}
    assert "__ynn_fusion" in _hlo(_xla.jit(_conv_sum))


def test_bad_env_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(_xla.CONV_ENV, "fast")
    with pytest.raises(ValueError, match=r"NSTYLE_CPU_CONV='fast' is not one of eigen, xla"):
        _xla.compiler_options()


def test_nstyle_jit_works_inside_a_users_jit_and_transforms():
    """JAX refuses compile options on a nested jit; nstyle's jitted functions must still work
    when called inside the user's own jit, vmap, grad or eval_shape."""
    f = _xla.jit(lambda x: jnp.sin(x) * 2.0)
    x = jnp.linspace(0.0, 1.0, 5)
    want = np.asarray(jnp.sin(x) * 2.0)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda y: f(y) + 1.0)(x)), want + 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(x)), want, rtol=1e-6)
    np.testing.assert_allclose(float(jax.grad(lambda y: f(y).sum())(x)[0]), 2.0, rtol=1e-6)
    assert jax.eval_shape(lambda: f(x)).shape == (5,)
    np.testing.assert_allclose(np.asarray(f(x)), want, rtol=1e-6)  # top level: with the options


def test_lazy_jit_forwards_the_jit_api():
    f = _xla.jit(static_argnums=1)(lambda x, n: x * n)
    assert float(f(jnp.float32(2.0), 3)) == 6.0
    f(jnp.float32(1.0), 3)
    assert f._cache_size() == 1 and f.__name__ == "<lambda>"


def test_persistent_cache_directory_and_opt_out(monkeypatch, tmp_path):
    """The directory comes from the argument / NSTYLE_XLA_CACHE / the weight cache; 'off' disables;
    an already configured directory is kept. (jax's config is restored afterwards.)"""
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv(_xla.XLA_CACHE_ENV, "off")
        assert _xla.persistent_cache() is None and jax.config.jax_compilation_cache_dir is None
        monkeypatch.delenv(_xla.XLA_CACHE_ENV)
        monkeypatch.setenv("NSTYLE_CACHE_DIR", str(tmp_path / "c"))
        assert _xla.persistent_cache() == str(tmp_path / "c" / "xla") == jax.config.jax_compilation_cache_dir
        assert jax.config.jax_persistent_cache_min_compile_time_secs == _xla.MIN_COMPILE_S
        assert _xla.persistent_cache(tmp_path / "other") == str(tmp_path / "c" / "xla")  # kept
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
