"""What the configs share: the ``FILE:ARG`` argument, the loss variants and the grids.

``get_config(arg)`` takes big_vision-style ``"key=value,..."`` arguments: ``loss`` names a
variant of :data:`LOSSES`, ``epochs`` sets ``num_epochs`` first (DRW starts at a fraction of
it). A config with a suite has a ``sweep()`` beside it: the suite's runs (:func:`grid`).
"""

import itertools
import os
import tempfile

# Loss variants: the trainer's loss name, its hyperparameters and other settings. ``drw`` is
# the fraction of the epochs after which DRW switches class-balanced weights on (160 of 200 in
# the LDAM-DRW protocol).
LOSSES = {
    "ce": {"loss": "ce"},
    "focal": {"loss": "focal", "hparams": {"gamma": 2.0}},
    "cb_focal": {"loss": "cb_focal", "hparams": {"beta": 0.9999, "gamma": 2.0}},
    "ldam_drw": {
        "loss": "ldam",
        "hparams": {"max_margin": 0.5, "scale": 30.0},
        "cosine_head": True,
        "drw": 0.8,
    },
    "la": {"loss": "la", "hparams": {"tau": 1.0}},
    "bs": {"loss": "bs"},
    "cot": {"loss": "cot"},
    "cce_paper": {"loss": "cce", "hparams": {"gamma": -1.0, "normalizer": "k_minus_1"}},
    "cce_code": {"loss": "cce", "hparams": {"gamma": 1.0, "normalizer": "k"}},
    "mse_ol": {"loss": "mse_ol", "hparams": {"alpha": 5.0}},
}
# Every variant, in the order a grid runs them (the losses of the quick protocol first).
ALL_LOSSES = ("ce", "cce_paper", "cce_code", "mse_ol", "ldam_drw", "la", "bs", "focal")
ALL_LOSSES += ("cb_focal", "cot")
TMP = tempfile.gettempdir()
# Runs of hours to days (resumable) go to a folder that survives a reboot.
RUNS_HOME = os.path.join(os.path.expanduser("~"), "cce_jax_runs")


def parse_arg(arg, **defaults) -> dict:
    """``"loss=ce,epochs=3"`` -> ``{"loss": "ce", "epochs": 3}``, typed by ``defaults``.

    >>> parse_arg("epochs=3", loss="", epochs=0)
    {'loss': '', 'epochs': 3}
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if key not in defaults or not sep:
            raise ValueError(f"config argument {item!r}: expected one of {sorted(defaults)}=VALUE")
        out[key] = type(defaults[key])(value)
    return out


def finish(c, arg, hparams=None):
    """Applies ``get_config``'s argument to ``c``: ``epochs``, then the ``loss`` variant with
    its hyperparameters (and ``hparams[variant]`` on top, a config's own values)."""
    a = parse_arg(arg, loss="", epochs=0)
    if a["epochs"]:
        c.num_epochs = a["epochs"]
    if a["loss"]:
        if a["loss"] not in LOSSES:
            raise ValueError(f"unknown loss variant {a['loss']!r}; known: {', '.join(LOSSES)}")
        spec = LOSSES[a["loss"]]
        c.loss.name = spec["loss"]
        c.loss.hparams.update({**spec.get("hparams", {}), **(hparams or {}).get(a["loss"], {})})
        if spec.get("cosine_head"):
            c.model.cosine_head = True
        if spec.get("drw"):
            c.loss.drw_epoch = int(round(spec["drw"] * c.num_epochs))
    return c


def grid(losses, ratios, seeds, profile="exp", epochs=0) -> list[dict]:
    """One run per (seed, ratio, loss), seeds outermost: ``{"loss", "ratio", "seed", "arg",
    "overrides"}`` (``arg`` for ``get_config``, ``overrides`` flat config keys). The seed sets
    the initialisation, the data order and which training examples survive the imbalance."""
    runs = []
    for seed, ratio, loss in itertools.product(seeds, ratios, losses):
        arg = f"loss={loss}" + (f",epochs={epochs}" if epochs else "")
        overrides = {"seed": int(seed), "data.subset_seed": int(seed)}
        overrides.update({"data.profile": profile, "data.ratio": float(ratio), "progress": False})
        runs.append(
            dict(loss=loss, ratio=float(ratio), seed=int(seed), arg=arg, overrides=overrides)
        )
    return runs
