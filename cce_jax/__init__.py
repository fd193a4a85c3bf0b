"""cce_jax: losses for class-imbalanced classification in JAX.

`import cce_jax` imports jax and optax only (the core: :mod:`cce_jax.losses`,
:mod:`cce_jax.labels`). The rest is imported on demand and needs an extra:

* ``cce_jax.data``: imbalanced splits and the device-resident input pipeline, TensorFlow-free
  (extra ``[data]``); the tfds source and the tf.data pipeline need TensorFlow (``[tfds]``);
* ``cce_jax.models`` and ``cce_jax.training``: flax models and the trainer (``[train]``).
"""

from cce_jax import labels, losses

__version__ = "0.1.0"

__all__ = ["labels", "losses", "__version__"]
