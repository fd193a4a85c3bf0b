"""The tf.data pipeline: host-side numpy batches, one slice of every global batch per process;
tensorflow is imported when the first train epoch is built, never at module import."""

from collections.abc import Iterator

import jax
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
        self._pidx, pcount = int(jax.process_index()), int(jax.process_count())
        super().__init__(
            split, global_batch_size, eval_batch_size, pcount, f"the process count {pcount}"
        )
        self._seed = int(seed)
        self._eval_local_b = self._eval_b // pcount
        self._tf_images = None

    def epoch_plan(self, epoch: int) -> imbalance.EpochPlan:
        """The global plan of epoch `epoch` (:func:`cce_jax.data.epoch_plan`), [steps, B]."""
        n, g = self.info.num_train, self._global_b
        return imbalance.epoch_plan(seed=self._seed, epoch=epoch, num_train=n, global_batch_size=g)

    def train_epoch(self, epoch: int) -> Iterator[dict]:
        """This process's batches of epoch `epoch`: a pure function of (seed, epoch)."""
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
        pad = imbalance.PAD

        @tf.autograph.experimental.do_not_convert
        def make_batch(pos, oy, ox, flip):
            x = tf.gather(images, pos)  # [B, H, W, C] uint8
            if self.augment:  # zero-pad by PAD, crop at (oy, ox), flip: two batched gathers
                x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
                rows = oy[:, None] + rows0
                cols = ox[:, None] + tf.where(flip[:, None] > 0, cols_rev, cols0)
                x = tf.gather(x, rows, axis=1, batch_dims=1)
                x = tf.gather(x, cols, axis=2, batch_dims=1)
            x = tf.cast(x, tf.float32) * a + b
            return {"image": x, "label": tf.gather(labels, pos)}

        plan = self.epoch_plan(int(epoch))
        sl = slice(self._pidx * self._local_b, (self._pidx + 1) * self._local_b)
        local = (plan.positions, plan.oy, plan.ox, plan.flip)
        # one element per step: this process's columns of the global batch
        ds = tf.data.Dataset.from_tensor_slices(
            tuple(np.ascontiguousarray(v[:, sl]) for v in local)
        )
        ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    def eval_batches(self) -> Iterator[dict]:
        """This process's share of the test split, once; padding has ``mask == False``."""
        test_x, test_y = self.test_split()
        lb = self._eval_local_b
        for i in range(self.num_eval_batches()):
            start = min(i * self._eval_b + self._pidx * lb, len(test_y))
            stop = min(start + lb, len(test_y))
            image = np.zeros((lb, *test_x.shape[1:]), np.float32)
            label, mask = np.zeros((lb,), np.int32), np.zeros((lb,), bool)
            image[: stop - start] = self.normalize(test_x[start:stop])
            label[: stop - start] = test_y[start:stop]
            mask[: stop - start] = True
            yield {"image": image, "label": label, "mask": mask}
