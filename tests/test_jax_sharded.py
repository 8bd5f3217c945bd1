"""Groups sharded across devices: under ``shard_map`` with ``axis_name``, the loss, the stats
and the gradients equal the single-device result. Runs in a subprocess with 4 forced CPU
devices, so ``XLA_FLAGS`` never leaks into the other tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    r"""
    import numpy as np
    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, PartitionSpec as P
    from haepo_backends.jax import (haepo_loss, haepo_loss_packed, haepo_loss_from_hidden)

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    rng = np.random.default_rng(0)
    M, T, V, H, G = 16, 6, 9, 3, 4
    # Groups are scattered: each group has trajectories on several devices.
    gids = jnp.asarray(rng.permutation(np.repeat(np.arange(G), M // G)).astype(np.int32))
    logp = jnp.asarray(rng.normal(size=(M, T)) - 1)
    mask = jnp.asarray(rng.random((M, T)) < 0.8).at[:, 0].set(True)
    R = jnp.asarray(rng.normal(size=M))
    ent = jnp.asarray(rng.random((M, T)))
    ref = logp + 0.1 * jnp.asarray(rng.normal(size=(M, T)))
    kw = dict(entropy_coef=0.1, kl_coef=0.2, temperature=1.3, num_groups=G)
    checks = 0

    def close(a, b, what):
        global checks
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-13,
                                   err_msg=what)
        checks += 1

    def padded(lp, r, mk, g, e, rf, axis_name=None):
        return haepo_loss(lp, r, mk, group_ids=g, entropy=e, ref_logp=rf, axis_name=axis_name,
                          **kw)

    single = padded(logp, R, mask, gids, ent, ref)
    g_single = jax.grad(lambda *a: padded(*a).loss, argnums=(0, 4))(logp, R, mask, gids, ent,
                                                                   ref)
    sharded_loss = jax.shard_map(lambda *a: padded(*a, axis_name="d").loss, mesh=mesh,
                                 in_specs=(P("d"),) * 6, out_specs=P())
    # 1. loss and stats are global (out_specs=P()); weights are each device's rows
    def parts(*a):
        out = padded(*a, axis_name="d")
        return out.loss, out.stats, out.weights

    sm_all = jax.jit(jax.shard_map(parts, mesh=mesh, in_specs=(P("d"),) * 6,
                                   out_specs=(P(), P(), P("d"))))
    loss_s, stats_s, weights_s = sm_all(logp, R, mask, gids, ent, ref)
    close(loss_s, single.loss, "loss")
    for k, v in stats_s.items():
        close(v, single.stats[k], k)
    close(weights_s, single.weights, "weights")
    # 2. gradient of the sharded loss (taken outside shard_map), jitted
    g_out = jax.jit(jax.grad(sharded_loss, argnums=(0, 4)))(logp, R, mask, gids, ent, ref)
    close(g_out[0], g_single[0], "grad logp (outer)")
    close(g_out[1], g_single[1], "grad entropy (outer)")
    # 3. gradient taken per device inside shard_map: each device's rows get its slice
    inner = jax.shard_map(
        lambda *a: jax.grad(lambda *b: padded(*b, axis_name="d").loss)(*a), mesh=mesh,
        in_specs=(P("d"),) * 6, out_specs=P("d"))
    close(jax.jit(inner)(logp, R, mask, gids, ent, ref), g_single[0], "grad logp (inner)")

    # 4. packed: each trajectory's steps on the device that holds its return (4 trajectories
    #    of T steps per device; segment ids are local to the device), compared with the
    #    single-device padded loss on an all-valid mask.
    seg = jnp.asarray(np.tile(np.repeat(np.arange(4), T), 4).astype(np.int32))
    full = jnp.ones_like(mask)
    single_p = padded(logp, R, full, gids, ent, ref)
    lp_all = logp.reshape(-1)
    packed = lambda lp, r, s, g, e, rf, axis_name=None: haepo_loss_packed(
        lp, s, r, group_ids=g, entropy=e, ref_logp=rf, axis_name=axis_name, **kw)
    smp = jax.shard_map(lambda *a: packed(*a, axis_name="d").loss, mesh=mesh,
                        in_specs=(P("d"),) * 6, out_specs=P())
    args_p = (lp_all, R, seg, gids, ent.reshape(-1), ref.reshape(-1))
    close(jax.jit(smp)(*args_p), single_p.loss, "packed loss")
    g_p = jax.jit(jax.grad(smp))(*args_p)
    g_full = jax.grad(lambda x: padded(x, R, full, gids, ent, ref).loss)(logp)
    close(g_p, g_full.reshape(-1), "packed grad")

    # 5. fused from-hidden path with exact KL, sharded over trajectories
    hid = jnp.asarray(rng.normal(size=(M, T, H)))
    W = jnp.asarray(rng.normal(size=(V, H)))
    acts = jnp.asarray(rng.integers(0, V, (M, T)).astype(np.int32))
    refh = hid + 0.1
    fh = lambda h, w, a, r, mk, g, rh, axis_name=None: haepo_loss_from_hidden(
        h, w, a, r, mk, ref_hidden=rh, group_ids=g, chunk_size=5, axis_name=axis_name,
        **kw).loss
    g1 = jax.grad(fh, argnums=(0, 1))(hid, W, acts, R, mask, gids, refh)
    smh = jax.shard_map(lambda *a: fh(*a, axis_name="d"), mesh=mesh,
                        in_specs=(P("d"), P(), P("d"), P("d"), P("d"), P("d"), P("d")),
                        out_specs=P())
    close(jax.jit(smh)(hid, W, acts, R, mask, gids, refh),
          fh(hid, W, acts, R, mask, gids, refh), "hidden loss")
    g2 = jax.jit(jax.grad(smh, argnums=(0, 1)))(hid, W, acts, R, mask, gids, refh)
    close(g2[0], g1[0], "hidden grad h")
    close(g2[1], g1[1], "hidden grad W")

    # 6. a named axis needs a static num_groups
    try:
        jax.shard_map(lambda lp, r, g: haepo_loss(lp, r, group_ids=g, axis_name="d").loss,
                      mesh=mesh, in_specs=(P("d"),) * 3, out_specs=P())(logp, R, gids)
    except ValueError as err:
        assert "num_groups" in str(err), err
        checks += 1
    print("CHECKS", checks)
    """
)


def test_sharded_groups_equal_single_device_loss_stats_and_grads():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("CHECKS"), proc.stdout
    assert int(last.split()[1]) == 19  # every comparison above ran
