"""Every config field with its default (the CIFAR-10-LT paper protocol, CE loss).

Run-control keys (may change when resuming a workdir): see
``cce_jax.training.config.RUN_CONTROL_KEYS``. Every other key must match the workdir's stored
config.json.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    from cce_jax import data

    c = ml_collections.ConfigDict()
    c.seed = 0
    # Several models in one program, one per seed (seed s also sets data.subset_seed = s):
    # --config.seeds='(0,1,2)'. Empty: one model with `seed` and `data.subset_seed`.
    c.seeds = ()

    c.data = data.default_config()  # source, name, profile, ratio, n_max, ... (cce_jax.data)
    c.data.source = "tfds:cifar10"  # tfds.load("cifar10"); other sources leave data.name None

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet32"  # resnet8 | resnet20 | resnet32 | resnet34
    c.model.width = ml_collections.config_dict.placeholder(int)  # None: the model's own
    c.model.cosine_head = False  # True for LDAM (normalised features x normalised weights)
    c.model.dtype = "float32"  # "bfloat16": mixed precision (params stay float32)
    # Convolutions: "xla" (lax.conv_general_dilated) | "shifted_matmul" (cce_jax.conv: the
    # weight gradient as matmuls, faster on CPUs whose XLA weight gradient is slow).
    c.model.conv_impl = "xla"

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "ce"  # ce focal cb_ce cb_focal ldam la bs cce mse_ol cce_paper cce_code | cot
    c.loss.hparams = ml_collections.ConfigDict()  # passed to cce_jax.losses.get(name, ...)
    c.loss.drw_epoch = -1  # deferred re-weighting from this (0-based) epoch on; -1 = off
    c.loss.drw_beta = 0.9999  # class-balanced weights of DRW
    c.cot = False  # COT alternating steps on top of loss.name (loss.name="cot" = CE + COT)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 2e-4  # coupled L2, on conv/dense kernels only
    c.optimizer.decay_all = False  # True: decay every parameter (PyTorch SGD default)

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "step"  # step | cosine | constant
    c.schedule.warmup_epochs = 5.0
    # lr * factors[i] from epoch boundaries[i] on (each factor times the base lr). LDAM protocol:
    # (160, 180), (0.01, 0.0001). CCE protocol: (100, 150), (0.1, 0.01).
    c.schedule.boundaries = (160, 180)
    c.schedule.factors = (0.01, 0.0001)

    c.batch_size = 128  # global, over all devices and processes
    c.eval_batch_size = 512
    c.num_epochs = 200
    c.steps_per_call = 1  # > 1: that many train steps per jitted call (lax.scan)

    # Run control.
    c.eval_every = 10  # epochs; the last epoch is always evaluated
    c.checkpoint_every = 1  # epochs; the last epoch is always saved
    # Also checkpoint inside long epochs: every N train steps and/or every M minutes (0 = off).
    c.checkpoint_every_steps = 0
    c.checkpoint_every_minutes = 0.0
    c.keep_checkpoints = 2
    c.progress = True  # tqdm bar when stdout is a terminal
    c.distributed = False  # jax.distributed.initialize() (cluster auto-detection)
    return c
