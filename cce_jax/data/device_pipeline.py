"""The device-resident pipeline (``pipeline="device"``): no tensorflow, no host->device copies.

The kept train subset (uint8) and the test split are placed on the devices once, sharded over
the ``"data"`` mesh axis. The kept examples are dealt to the D devices once (a permutation
seeded by `seed`, then D near-equal chunks); each epoch, every device permutes and augments
its OWN chunk inside ``jax.shard_map``, with ``jax.random`` keys folded from (seed, epoch,
device index), and takes its ``B / D`` examples of every batch from it. An epoch is therefore
a pure function of (seed, epoch, D); each device drops ``len(chunk) - steps * B / D`` of its
examples per epoch. Batches are global ``jax.Array`` s sharded ``P("data")``.
"""

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cce_jax.data import imbalance
from cce_jax.data.builder import Split, SplitViews
from cce_jax.data.sources import IGNORE_INDEX
from cce_jax.parallel import batch_sharding, gather_to_host, make_mesh


def _place(host: np.ndarray, sharding):
    """Global array from a host array; each process materialises only its addressable shards."""
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _crop_flip(x, oy, ox, flip, pad, fill=0):
    """Pad [b, H, W, C] by `pad` with `fill`, crop H x W at (oy, ox), mirror where flip (jax)."""
    _, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)

    def one(img, y0, x0, f):
        crop = jax.lax.dynamic_slice(img, (y0, x0, 0), (h, w, c))
        return jnp.where(f > 0, crop[:, ::-1], crop)

    return jax.vmap(one)(xp, oy, ox, flip)


def _sharded(fn, mesh, in_specs, out_specs):
    """``fn`` run on each device's shards by ``jax.shard_map``, jitted."""
    out_shardings = tuple(NamedSharding(mesh, spec) for spec in out_specs)
    fn = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    return jax.jit(fn, out_shardings=out_shardings)


@functools.lru_cache(maxsize=64)
def _compiled(mesh, steps: int, lb: int, n_pad: int, augment: bool, dense: bool):
    """(plan, batch, eval) jitted, shared by the pipelines of one shape (seeds compile once).
    plan: (seed, epoch, n_valid) -> (positions, oy, ox, flip), each [steps, B]. ``dense``: label
    maps, cropped and flipped with their images (padding: the ignore index)."""
    pad, spec_d, spec_p = imbalance.PAD, P("data"), P(None, "data")

    def plan_local(seed, epoch, n_valid):
        dev = jax.lax.axis_index("data")
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), dev)
        k_perm, k_y, k_x, k_f = jax.random.split(key, 4)
        perm = jax.random.permutation(k_perm, n_pad)
        # Valid slots first (stable, so their order stays uniformly random).
        perm = perm[jnp.argsort(perm >= n_valid[0], stable=True)]
        pos = perm[: steps * lb].reshape(steps, lb).astype(jnp.int32)
        oy = jax.random.randint(k_y, (steps, lb), 0, 2 * pad + 1, jnp.int32)
        ox = jax.random.randint(k_x, (steps, lb), 0, 2 * pad + 1, jnp.int32)
        flip = jax.random.randint(k_f, (steps, lb), 0, 2, jnp.int32)
        return pos, oy, ox, flip

    def batch_local(x, y, pos, oy, ox, flip, step, a, b):
        p = pos[step]
        img, lab = x[p], y[p]
        if augment:
            img = _crop_flip(img, oy[step], ox[step], flip[step], pad)
            if dense:
                lab = _crop_flip(lab[..., None], oy[step], ox[step], flip[step], pad, IGNORE_INDEX)
                lab = lab[..., 0]
        return img.astype(jnp.float32) * a + b, lab.astype(jnp.int32)

    def eval_local(x, y, mask, i, a, b):
        return x[i].astype(jnp.float32) * a + b, y[i].astype(jnp.int32), mask[i]

    return (
        _sharded(plan_local, mesh, (P(), P(), spec_d), (spec_p,) * 4),
        _sharded(batch_local, mesh, (spec_d,) * 2 + (spec_p,) * 4 + (P(),) * 3, (spec_d,) * 2),
        _sharded(eval_local, mesh, (spec_p,) * 3 + (P(),) * 3, (spec_d,) * 3),
    )


class DeviceData(SplitViews):
    """Device-resident input pipelines of one data set; see the module docstring.

    Train batches: ``{"image": float32 [B, H, W, C], "label": int32 [B]}`` (segmentation:
    ``"label"`` int32 [B, H, W], 255 = ignore, cropped and flipped with the image); eval
    batches add ``"mask"`` bool [B] (False on the padding of the last batch). Every value is
    a global ``jax.Array`` with sharding ``NamedSharding(mesh, P("data"))``.
    """

    pipeline = "device"

    def __init__(
        self, split: Split, *, seed: int, global_batch_size: int, eval_batch_size: int, mesh=None
    ):
        mesh = make_mesh() if mesh is None else mesh
        if "data" not in mesh.axis_names:
            raise ValueError(f"mesh: needs a 'data' axis, got axes {mesh.axis_names}")
        d = int(mesh.shape["data"])
        self.mesh, self.num_devices = mesh, d
        devices = f"the {d} devices of the 'data' mesh axis (pipeline='device')"
        super().__init__(split, global_batch_size, eval_batch_size, d, devices)
        self._seed32 = int(seed) & 0xFFFFFFFF
        self._data_sharding, self._plan_sharding = batch_sharding(mesh), batch_sharding(mesh, 1)
        # Label maps stay uint8 on the devices (a quarter of int32's memory); batches are int32.
        dense = bool(split.train_labels.shape[1:])
        self._label = (np.uint8, IGNORE_INDEX) if dense else (np.int32, 0)
        n_pad = self._place_train(split.info.num_train, d)
        self._place_test()
        self._a, self._b = jnp.asarray(split.a), jnp.asarray(split.b)
        self._plan_fn, self._batch_fn, self._eval_fn = _compiled(
            mesh, self.steps_per_epoch, self._local_b, n_pad, self.augment, dense
        )

    def _place_train(self, n: int, d: int) -> int:
        """Deals the kept examples to the devices once: slot (dev, j) holds kept[_slots[dev, j]]."""
        split, (label_dtype, fill) = self._split, self._label
        chunks = np.array_split(np.random.default_rng([self._seed32, 0xD15]).permutation(n), d)
        n_pad = max(len(c) for c in chunks)
        self._slots = slots = np.full((d, n_pad), -1, np.int64)
        for i, c in enumerate(chunks):
            slots[i, : len(c)] = c
        flat = slots.reshape(-1)
        valid = flat >= 0
        images = np.zeros((d * n_pad, *split.info.image_shape), np.uint8)
        labels = np.full((d * n_pad, *split.train_labels.shape[1:]), fill, label_dtype)
        images[valid] = split.train_images[flat[valid]]
        labels[valid] = split.train_labels[flat[valid]]
        self._train = _place(images, self._data_sharding), _place(labels, self._data_sharding)
        self._n_valid = _place(np.asarray([len(c) for c in chunks], np.int32), self._data_sharding)
        return n_pad

    def _place_test(self) -> None:
        """The test split as [num_batches, EB, ...] sharded on the batch axis; batch i = row i."""
        split, (label_dtype, fill) = self._split, self._label
        m, nb, eval_b = split.info.num_test, self.num_eval_batches(), self._eval_b
        tx = np.zeros((nb * eval_b, *split.info.image_shape), np.uint8)
        ty = np.full((nb * eval_b, *split.test_labels.shape[1:]), fill, label_dtype)
        tm = np.zeros((nb * eval_b,), bool)
        tx[:m], ty[:m], tm[:m] = split.test_images, split.test_labels, True
        self._test = tuple(
            _place(v.reshape((nb, eval_b) + v.shape[1:]), self._plan_sharding) for v in (tx, ty, tm)
        )

    def _device_plan(self, epoch: int):
        return self._plan_fn(jnp.uint32(self._seed32), jnp.uint32(int(epoch)), self._n_valid)

    def epoch_plan(self, epoch: int) -> imbalance.EpochPlan:
        """Epoch `epoch` as host arrays [steps, B] in global batch order (positions index
        :meth:`train_split`; the offsets and flips are unused when ``augment`` is False)."""
        pos, oy, ox, flip = (gather_to_host(v).astype(np.int64) for v in self._device_plan(epoch))
        dev = np.arange(self._global_b) // self._local_b  # device of each batch column
        return imbalance.EpochPlan(self._slots[dev[None, :], pos], oy, ox, flip)

    def train_epoch(self, epoch: int) -> Iterator[dict]:
        """Global batches of epoch `epoch`: a pure function of (seed, epoch, device count)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        plan = self._device_plan(epoch)
        for s in range(self.steps_per_epoch):
            x, y = self._batch_fn(*self._train, *plan, jnp.int32(s), self._a, self._b)
            yield {"image": x, "label": y}

    def eval_batches(self) -> Iterator[dict]:
        """The test split once, in order; the last batch's padding has ``mask == False``."""
        for i in range(self.num_eval_batches()):
            image, label, mask = self._eval_fn(*self._test, jnp.int32(i), self._a, self._b)
            yield {"image": image, "label": label, "mask": mask}
