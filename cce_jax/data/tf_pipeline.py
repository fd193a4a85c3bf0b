"""The tf.data pipeline: host-side numpy batches, one slice of every global batch per process.

tensorflow is imported when the first train epoch is built, never at module import.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cce_jax.data import imbalance
from cce_jax.data.builder import Split, SplitViews


class TFData(SplitViews):
    """Input pipelines of one imbalanced data set through tf.data (``pipeline="tf"``).

    Batches are dicts of process-local numpy arrays: train ``image`` float32 [b, H, W, C],
    ``label`` int32 [b]; eval also ``mask`` bool [b]; ``b = global batch / process count``.
    """

    pipeline = "tf"

    def __init__(self, split: Split, *, seed: int, global_batch_size: int, eval_batch_size: int):
        import jax

        pidx, pcount = int(jax.process_index()), int(jax.process_count())
        for name, value in (
            ("global_batch_size", global_batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1 or value % pcount:
                raise ValueError(
                    f"{name}={value} must be a positive multiple of the process count {pcount}"
                )
        self._split, self.info, self.augment = split, split.info, split.augment
        self.steps_per_epoch = split.info.num_train // global_batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"global_batch_size={global_batch_size} exceeds the {split.info.num_train} "
                "training examples (batches drop the remainder)"
            )
        self._seed = int(seed)
        self._pidx, self._pcount = pidx, pcount
        self._global_b, self._local_b = int(global_batch_size), int(global_batch_size) // pcount
        self._eval_global_b, self._eval_local_b = int(eval_batch_size), eval_batch_size // pcount
        self._tf_images = None

    # -- public views (tests, references): train_split, test_split, normalize (SplitViews)

    def epoch_plan(self, epoch: int) -> imbalance.EpochPlan:
        """The global plan of epoch `epoch` (:func:`cce_jax.data.epoch_plan`), [steps, B]."""
        return imbalance.epoch_plan(
            seed=self._seed,
            epoch=int(epoch),
            num_train=self.info.num_train,
            global_batch_size=self._global_b,
        )

    # -- train -------------------------------------------------------------------------

    def _local_plan(self, epoch: int):
        plan = self.epoch_plan(epoch)
        sl = slice(self._pidx * self._local_b, (self._pidx + 1) * self._local_b)
        return tuple(
            np.ascontiguousarray(v[:, sl]).reshape(-1)
            for v in (plan.positions, plan.oy, plan.ox, plan.flip)
        )

    def _dataset(self, epoch: int):
        import tensorflow as tf

        if self._tf_images is None:
            with tf.device("/cpu:0"):
                self._tf_images = tf.constant(self._split.train_images)
                self._tf_labels = tf.constant(self._split.train_labels)
        images, labels = self._tf_images, self._tf_labels
        h, w, _ = self.info.image_shape
        a = tf.constant(self._split.a.reshape(1, 1, 1, -1))
        b = tf.constant(self._split.b.reshape(1, 1, 1, -1))
        rows0 = tf.range(h, dtype=tf.int64)[None]
        cols0 = tf.range(w, dtype=tf.int64)[None]
        cols_rev = tf.range(w - 1, -1, -1, dtype=tf.int64)[None]
        augment = self.augment
        pad = imbalance.PAD

        @tf.autograph.experimental.do_not_convert
        def make_batch(pos, oy, ox, flip):
            x = tf.gather(images, pos)  # [B, H, W, C] uint8
            if augment:  # zero-pad by PAD, crop at (oy, ox), flip: two batched gathers
                x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
                rows = oy[:, None] + rows0
                cols = ox[:, None] + tf.where(flip[:, None] > 0, cols_rev, cols0)
                x = tf.gather(x, rows, axis=1, batch_dims=1)
                x = tf.gather(x, cols, axis=2, batch_dims=1)
            x = tf.cast(x, tf.float32) * a + b
            return {"image": x, "label": tf.gather(labels, pos)}

        ds = tf.data.Dataset.from_tensor_slices(self._local_plan(epoch))
        ds = ds.batch(self._local_b, drop_remainder=True)
        ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        opts = tf.data.Options()
        opts.deterministic = True
        return ds.with_options(opts)

    def train_epoch(self, epoch: int) -> Iterator[dict]:
        """This process's batches of epoch `epoch`: a pure function of (seed, epoch)."""
        return self._dataset(int(epoch)).as_numpy_iterator()

    # -- eval --------------------------------------------------------------------------

    def num_eval_batches(self) -> int:
        """Batches yielded by :meth:`eval_batches`; the same on every process."""
        return -(-self.info.num_test // self._eval_global_b)

    def eval_batches(self) -> Iterator[dict]:
        """This process's share of the test split, once; padding has ``mask == False``."""
        test_x, test_y = self.test_split()
        n = len(test_y)
        gb, lb = self._eval_global_b, self._eval_local_b
        shape = test_x.shape[1:]
        for i in range(self.num_eval_batches()):
            start = i * gb + self._pidx * lb
            stop = min(start + lb, n)
            k = max(0, stop - start)
            image = np.zeros((lb,) + shape, np.float32)
            label = np.zeros((lb,), np.int32)
            mask = np.zeros((lb,), bool)
            if k:
                image[:k] = self.normalize(test_x[start:stop])
                label[:k] = test_y[start:stop]
                mask[:k] = True
            yield {"image": image, "label": label, "mask": mask}
