"""cce_jax: losses for class-imbalanced classification in JAX.

`import cce_jax` imports jax and optax only. The input pipelines (`cce_jax.data`,
tensorflow/tfds), the models and the trainer (`cce_jax.models`, `cce_jax.training`, flax)
are imported on demand.
"""

from cce_jax import labels, losses

__version__ = "0.1.0"

__all__ = ["labels", "losses", "__version__"]
