"""The start of every subprocess worker in tests/: N CPU devices, before JAX is imported.

XLA:CPU compiles without LLVM's optimisations (``--xla_backend_optimization_level=0``): what
the workers compare (how a sharded program partitions and reduces, what a resumed run
computes) is decided before code generation, every configuration compiles with the same
flag, and the ResNet steps compile 3-5x faster.
"""

import os
import sys


def cpu_devices(n: int) -> None:
    """``n`` simulated CPU devices for the JAX this process imports next; the repository
    root on ``sys.path``."""
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={int(n)}"
        + " --xla_backend_optimization_level=0"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
