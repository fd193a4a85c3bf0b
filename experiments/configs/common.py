"""What the configs share: the ``FILE:ARG`` argument (big_vision-style ``"loss=VARIANT,
epochs=N"``), the loss variants and the grids (a suite's ``sweep()`` returns :func:`grid`).
"""

import itertools
import os
import tempfile

# Loss variants; ``drw``: the fraction of the epochs after which DRW starts (LDAM-DRW: 160/200).
LOSSES = {
    "ce": {"loss": "ce"},
    "focal": {"loss": "focal", "hparams": {"gamma": 2.0}},
    "cb_focal": {"loss": "cb_focal", "hparams": {"beta": 0.9999, "gamma": 2.0}},
    "ldam_drw": {"loss": "ldam", "hparams": {"max_margin": 0.5, "scale": 30.0}, "drw": 0.8},
    "la": {"loss": "la", "hparams": {"tau": 1.0}},
    "bs": {"loss": "bs"},
    "cot": {"loss": "cot"},
    "cce_paper": {"loss": "cce", "hparams": {"gamma": -1.0, "normalizer": "k_minus_1"}},
    "cce_code": {"loss": "cce", "hparams": {"gamma": 1.0, "normalizer": "k"}},
    "mse_ol": {"loss": "mse_ol", "hparams": {"alpha": 5.0}},
}
LOSSES["ldam_drw"]["cosine_head"] = True
# Every variant, in the order a grid runs them.
ALL_LOSSES = tuple("ce cce_paper cce_code mse_ol ldam_drw la bs focal cb_focal cot".split())
TMP = tempfile.gettempdir()
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
    """Applies ``arg``: ``epochs``, then the ``loss`` variant (``hparams[variant]`` on top)."""
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
    "overrides"}`` (``arg`` for ``get_config``, ``overrides`` flat config keys)."""
    runs = []
    for seed, ratio, loss in itertools.product(map(int, seeds), map(float, ratios), losses):
        arg = f"loss={loss}" + (f",epochs={epochs}" if epochs else "")
        overrides = {"seed": seed, "data.subset_seed": seed}
        overrides.update({"data.profile": profile, "data.ratio": ratio, "progress": False})
        runs.append(dict(loss=loss, ratio=ratio, seed=seed, arg=arg, overrides=overrides))
    return runs
