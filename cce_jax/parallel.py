"""Devices and data placement for the trainer and the device pipeline: one 1-D ``"data"``
mesh over all (global) devices; a batch is sharded along its batch axis, which may follow
``leading`` unsharded axes (vmapped models, scanned steps); parameters are replicated."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
    """``jax.distributed.initialize`` (CPU collectives via gloo); call before using JAX."""
    with contextlib.suppress(Exception):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = dict(coordinator_address=coordinator_address, num_processes=num_processes)
    kw = {k: v for k, v in dict(kw, process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kw)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over all (global) devices, Auto axis type."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def batch_sharding(mesh, leading: int = 0) -> NamedSharding:
    """Sharding of a batch whose batch axis follows ``leading`` unsharded axes."""
    return NamedSharding(mesh, P(*([None] * leading), "data"))


def shard_batch(batch: dict, mesh, leading: int = 0) -> dict:
    """Process-local numpy batch -> global jax arrays sharded on ``data``.

    Arrays that are already ``jax.Array`` (the device pipeline's) are passed through.
    """
    sharding = batch_sharding(mesh, leading)
    return {
        k: v
        if isinstance(v, jax.Array)
        else jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
    }


def to_host(x) -> np.ndarray:
    """Host copy of a replicated (possibly multi-process) array."""
    return np.asarray(x.addressable_shards[0].data)


def gather_to_host(x) -> np.ndarray:
    """Host copy of a sharded array, all of it on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


@functools.lru_cache(maxsize=16)
def _device_stacker(mesh, leading: int):
    return jax.jit(
        lambda bs: jax.tree.map(lambda *xs: jnp.stack(xs), *bs),
        out_shardings=batch_sharding(mesh, leading),
    )


def stack_batches(batches, mesh=None, leading: int = 1) -> dict:
    """Stacks batches (dicts with equal keys) on a new leading axis.

    The result's batch axis follows ``leading`` unsharded axes (1: S per-model batches
    ``[B, ...]`` -> ``[S, B, ...]``; 2: N stacked ``[S, B, ...]`` -> ``[N, S, B, ...]``).
    ``jax.Array`` batches (device pipeline) are stacked on device, each device stacking its
    own rows (``mesh`` defaults to theirs). numpy batches (tf pipeline) are stacked on the
    host, and sharded when ``mesh`` is given.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("stack_batches: needs at least one batch")
    keys = list(batches[0])
    if any(list(b) != keys for b in batches):
        raise ValueError("stack_batches: batches must have the same keys")
    first = batches[0][keys[0]]
    if isinstance(first, jax.Array):
        mesh = first.sharding.mesh if mesh is None else mesh
        return _device_stacker(mesh, leading)(batches)
    stacked = {k: np.stack([np.asarray(b[k]) for b in batches]) for k in keys}
    return stacked if mesh is None else shard_batch(stacked, mesh, leading)
