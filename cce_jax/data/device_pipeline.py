"""The device-resident pipeline (``pipeline="device"``): no tensorflow, no host->device copies.

The kept train subset (uint8) and the test split are placed on the devices once, sharded over
the ``"data"`` mesh axis. Each epoch, every device permutes and augments its OWN shard inside
``jax.shard_map`` (no cross-device gathers), with keys from ``jax.random`` folded from
(seed, epoch, device index). Batches are global ``jax.Array`` s sharded ``P("data")``.

Data order: the kept examples are dealt to the D devices once (a permutation seeded by
`seed`, then D near-equal chunks); per epoch, device d draws its ``B / D`` examples of every
batch from its chunk only. An epoch is therefore a pure function of (seed, epoch, D): the same
run on another device count sees the same examples per epoch up to the dropped remainder, but
in another order and with other crops. Each device drops ``len(chunk) - steps * B / D`` of its
examples per epoch (``N - steps * B`` in total, as the tf pipeline does).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from cce_jax.data import imbalance
from cce_jax.data.builder import Split, SplitViews
from cce_jax.data.sources import IGNORE_INDEX as IGNORE

__all__ = ["DeviceData", "default_mesh", "stack_batches"]


def default_mesh():
    """A 1-D ``("data",)`` mesh over all (global) devices (:func:`cce_jax.parallel.make_mesh`)."""
    from cce_jax.parallel import make_mesh

    return make_mesh()


def _place(host: np.ndarray, sharding):
    """Global array from a host array; each process materialises only its addressable shards."""
    import jax

    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _crop_flip(x, oy, ox, flip, pad, fill=0):
    """Pad [b, H, W, C] by `pad` with `fill`, crop H x W at (oy, ox), mirror where flip (jax)."""
    import jax
    import jax.numpy as jnp

    _, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)

    def one(img, y0, x0, f):
        crop = jax.lax.dynamic_slice(img, (y0, x0, 0), (h, w, c))
        return jnp.where(f > 0, crop[:, ::-1], crop)

    return jax.vmap(one)(xp, oy, ox, flip)


@functools.lru_cache(maxsize=64)
def _compiled(mesh, steps: int, lb: int, n_pad: int, augment: bool, dense: bool):
    """(plan, batch, eval) jitted shard_map functions, shared by every pipeline of one shape.

    Several seeds (same counts, same batch) therefore compile once. ``dense``: the labels
    are label maps [H, W], cropped and flipped with their images (padding: the ignore index).
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    pad = imbalance.PAD
    spec_d, spec_p = P("data"), P(None, "data")
    data_sh, plan_sh = NamedSharding(mesh, spec_d), NamedSharding(mesh, spec_p)

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

    plan_fn = jax.jit(
        jax.shard_map(plan_local, mesh=mesh, in_specs=(P(), P(), spec_d), out_specs=(spec_p,) * 4),
        out_shardings=(plan_sh,) * 4,
    )

    def batch_local(x, y, pos, oy, ox, flip, step, a, b):
        p = pos[step]
        img, lab = x[p], y[p]
        if augment:
            img = _crop_flip(img, oy[step], ox[step], flip[step], pad)
            if dense:
                lab = _crop_flip(lab[..., None], oy[step], ox[step], flip[step], pad, IGNORE)
                lab = lab[..., 0]
        return img.astype(jnp.float32) * a + b, lab.astype(jnp.int32)

    batch_fn = jax.jit(
        jax.shard_map(
            batch_local,
            mesh=mesh,
            in_specs=(spec_d, spec_d) + (spec_p,) * 4 + (P(), P(), P()),
            out_specs=(spec_d, spec_d),
        ),
        out_shardings=(data_sh,) * 2,
    )

    def eval_local(x, y, mask, i, a, b):
        return x[i].astype(jnp.float32) * a + b, y[i].astype(jnp.int32), mask[i]

    eval_fn = jax.jit(
        jax.shard_map(
            eval_local, mesh=mesh, in_specs=(spec_p,) * 3 + (P(), P(), P()), out_specs=(spec_d,) * 3
        ),
        out_shardings=(data_sh,) * 3,
    )
    return plan_fn, batch_fn, eval_fn


class DeviceData(SplitViews):
    """Device-resident input pipelines of one imbalanced data set; see the module docstring.

    Train batches: ``{"image": float32 [B, H, W, C], "label": int32 [B]}`` (segmentation:
    ``"label"`` int32 [B, H, W], 255 = ignore, cropped and flipped with the image); eval
    batches add ``"mask"`` bool [B] (False on the padding of the last batch). Every value is
    a global ``jax.Array`` with sharding ``NamedSharding(mesh, P("data"))``.
    """

    pipeline = "device"

    def __init__(
        self, split: Split, *, seed: int, global_batch_size: int, eval_batch_size: int, mesh=None
    ):
        import jax.numpy as jnp
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        mesh = default_mesh() if mesh is None else mesh
        if "data" not in mesh.axis_names:
            raise ValueError(f"mesh: needs a 'data' axis, got axes {mesh.axis_names}")
        d = int(mesh.shape["data"])
        for name, value in (
            ("global_batch_size", global_batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if int(value) < 1 or int(value) % d:
                raise ValueError(
                    f"{name}={value} must be a positive multiple of the {d} devices of the "
                    "'data' mesh axis (pipeline='device')"
                )
        self._split = split
        self.info = split.info
        self.augment = split.augment
        self.mesh = mesh
        self.num_devices = d
        n = split.info.num_train
        self._global_b = int(global_batch_size)
        self._local_b = self._global_b // d
        self.steps_per_epoch = n // self._global_b
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"global_batch_size={global_batch_size} exceeds the {n} training examples "
                "(batches drop the remainder)"
            )
        self._seed32 = int(seed) & 0xFFFFFFFF
        self._data_sharding = NamedSharding(mesh, P("data"))
        self._plan_sharding = NamedSharding(mesh, P(None, "data"))

        # Deal the kept examples to the devices once: slot (dev, j) holds kept[_slots[dev, j]].
        deal = np.random.default_rng([self._seed32, 0xD15]).permutation(n)
        chunks = np.array_split(deal, d)
        self._n_pad = n_pad = max(len(c) for c in chunks)
        slots = np.full((d, n_pad), -1, np.int64)
        for i, c in enumerate(chunks):
            slots[i, : len(c)] = c
        self._slots = slots
        flat = slots.reshape(-1)
        valid = flat >= 0
        h, w, c = split.info.image_shape
        images = np.zeros((d * n_pad, h, w, c), np.uint8)
        label_shape = split.train_labels.shape[1:]  # () or a label map's (H, W)
        # Label maps stay uint8 on the devices (a quarter of int32's memory); batches are int32.
        label_dtype, fill = (np.uint8, IGNORE) if label_shape else (np.int32, 0)
        labels = np.full((d * n_pad, *label_shape), fill, label_dtype)
        images[valid] = split.train_images[flat[valid]]
        labels[valid] = split.train_labels[flat[valid]]
        self._train_x = _place(images, self._data_sharding)
        self._train_y = _place(labels, self._data_sharding)
        self._n_valid = _place(np.asarray([len(c) for c in chunks], np.int32), self._data_sharding)

        # Test split: [num_batches, EB, ...] sharded on the batch axis; batch i = row i.
        self._eval_b = int(eval_batch_size)
        m = split.info.num_test
        nb = -(-m // self._eval_b)
        tx = np.zeros((nb * self._eval_b, h, w, c), np.uint8)
        ty = np.full((nb * self._eval_b, *label_shape), fill, label_dtype)
        tm = np.zeros((nb * self._eval_b,), bool)
        tx[:m], ty[:m], tm[:m] = split.test_images, split.test_labels, True
        shape2 = (nb, self._eval_b)
        self._test = tuple(
            _place(v.reshape(shape2 + v.shape[1:]), self._plan_sharding) for v in (tx, ty, tm)
        )
        self._num_eval_batches = nb

        self._a = jnp.asarray(split.a)
        self._b = jnp.asarray(split.b)
        self._plan_fn, self._batch_fn, self._eval_fn = _compiled(
            mesh, self.steps_per_epoch, self._local_b, n_pad, self.augment, bool(label_shape)
        )

    # -- public views (tests, references): train_split, test_split, normalize (SplitViews)

    def _device_plan(self, epoch: int):
        import jax.numpy as jnp

        return self._plan_fn(jnp.uint32(self._seed32), jnp.uint32(int(epoch)), self._n_valid)

    def epoch_plan(self, epoch: int) -> imbalance.EpochPlan:
        """Epoch `epoch` as host arrays [steps, B] in global batch order.

        ``positions`` index :meth:`train_split`; (oy, ox, flip) are the crop offsets into the
        image zero-padded by 4 and the mirror flags (unused when ``augment`` is False).
        """
        from cce_jax.parallel import gather_to_host

        plan = self._device_plan(epoch)
        pos, oy, ox, flip = (gather_to_host(v).astype(np.int64) for v in plan)
        dev = np.arange(self._global_b) // self._local_b  # device of each batch column
        positions = self._slots[dev[None, :], pos]
        return imbalance.EpochPlan(positions, oy, ox, flip)

    # -- train / eval -------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> Iterator[dict]:
        """Global batches of epoch `epoch`: a pure function of (seed, epoch, device count)."""
        import jax.numpy as jnp

        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        plan = self._device_plan(epoch)
        for s in range(self.steps_per_epoch):
            image, label = self._batch_fn(
                self._train_x, self._train_y, *plan, jnp.int32(s), self._a, self._b
            )
            yield {"image": image, "label": label}

    def num_eval_batches(self) -> int:
        """Batches yielded by :meth:`eval_batches`."""
        return self._num_eval_batches

    def eval_batches(self) -> Iterator[dict]:
        """The test split once, in order; the last batch's padding has ``mask == False``."""
        import jax.numpy as jnp

        for i in range(self._num_eval_batches):
            image, label, mask = self._eval_fn(*self._test, jnp.int32(i), self._a, self._b)
            yield {"image": image, "label": label, "mask": mask}


def stack_batches(batches):
    """Stacks S per-seed batches into one dict of [S, B, ...] arrays: device arrays on device,
    sharded ``P(None, "data")``; numpy arrays on the host (:func:`cce_jax.parallel.stack_batches`).
    """
    from cce_jax.parallel import stack_batches as stack

    return stack(batches)
