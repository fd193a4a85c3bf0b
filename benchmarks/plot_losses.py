"""A picture of the losses: each loss and its gradient on the true logit against p_g.

    python -m benchmarks.plot_losses [--out_dir docs/img]     # writes losses_*.png

K = 10, the nine wrong-class logits 0 and ``z_g = log(9 p_g / (1 - p_g))``, so ``p_g`` fixes
the logits; class counts (MSE-OL, LDAM) are CIFAR-10-LT's at ratio 100. LDAM's x axis and
gradient are on the scaled logits. A second CCE figure shows the gradient on a "confuser"
wrong class holding a share of the wrong-class probability at ``p_g = 0.5``. The setting in
full: docs/losses.md.
"""

import argparse
import functools
import os

import matplotlib

matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from cce_jax import losses

K = 10
COUNTS = np.round(5000 * 0.01 ** (np.arange(K) / (K - 1))).astype(int)  # CIFAR-10-LT, ratio 100
FREQUENT, RARE = 0, K - 1
P = np.linspace(0.002, 0.998, 499)
DPI = 100


def _logits(p, g, scale=1.0):
    """[N, K] logits with the wrong classes at 0 and softmax(scale * z)_g = p."""
    z = np.zeros((len(p), K), np.float32)
    z[:, g] = np.log((K - 1) * p / (1 - p)) / scale
    return z


def _loss_and_true_grad(fn, z, g):
    """Per-row loss and d loss / d z_g (rows are independent: the gradient of the sum)."""
    labels = jnp.full((z.shape[0],), g, jnp.int32)
    loss, pull = jax.vjp(lambda zz: fn(zz, labels), jnp.asarray(z))
    (grad,) = pull(jnp.ones_like(loss))
    return np.asarray(loss), np.asarray(grad)[:, g]


def _panel(axes, curves, title):
    """curves: list of (label, loss, grad, style dict). Left: loss; right: gradient."""
    for label, loss, grad, style in curves:
        axes[0].plot(P, loss, label=label, **style)
        axes[1].plot(P, grad, label=label, **style)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel(r"$\partial$ loss / $\partial z_g$")
    for ax in axes:
        ax.set_xlabel(r"true-class probability $p_g$")
        ax.axhline(0.0, color="0.7", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].figure.suptitle(title, fontsize=10)


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, f"losses_{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")
    return path


def _figure():
    return plt.subplots(1, 2, figsize=(9, 3.4))


def plot_all(out_dir: str) -> list:
    os.makedirs(out_dir, exist_ok=True)
    ce_style = {"color": "0.4", "ls": "--", "lw": 1.2}
    g = 0  # the true class for the count-free losses (any class gives the same curves)
    z = _logits(P, g)
    ce = _loss_and_true_grad(losses.get("ce"), z, g)
    paths = []

    # Cross entropy.
    fig, axes = _figure()
    _panel(axes, [("CE", *ce, {"color": "C0"})], "cross entropy (K=10, wrong-class logits equal)")
    paths.append(_save(fig, out_dir, "ce"))

    # CCE, both signs.
    paper = _loss_and_true_grad(losses.get("cce", gamma=-1.0, normalizer="k_minus_1"), z, g)
    code = _loss_and_true_grad(losses.get("cce", gamma=1.0, normalizer="k"), z, g)
    fig, axes = _figure()
    _panel(
        axes,
        [
            ("CE", *ce, ce_style),
            (r"CCE paper: $\gamma=-1$, $/(K-1)$", *paper, {"color": "C1"}),
            (r"CCE public code: $\gamma=+1$, $/K$", *code, {"color": "C2", "ls": ":"}),
        ],
        "complement cross entropy, both signs (wrong-class logits equal)",
    )
    paths.append(_save(fig, out_dir, "cce"))

    # CCE on the wrong classes: the gradient on a "confuser" logit.
    share = np.linspace(1 / (K - 1), 0.99, 300)
    c = (K - 2) * share / (1 - share)  # exp(z_confuser); other wrong logits 0
    zc = np.zeros((len(share), K), np.float32)
    zc[:, 1] = np.log(c)
    zc[:, g] = np.log(c + K - 2)  # p_g = 0.5
    fig, ax = plt.subplots(1, 1, figsize=(5.2, 3.4))
    paper_fn = losses.get("cce", gamma=-1.0, normalizer="k_minus_1")
    code_fn = losses.get("cce", gamma=1.0, normalizer="k")
    for label, fn, style in [
        ("CE", losses.get("ce"), ce_style),
        (r"CCE paper: $\gamma=-1$, $/(K-1)$", paper_fn, {"color": "C1"}),
        (r"CCE public code: $\gamma=+1$, $/K$", code_fn, {"color": "C2", "ls": ":"}),
    ]:
        labels = jnp.full((len(share),), g, jnp.int32)
        grad = jax.grad(lambda zz, fn=fn, labels=labels: jnp.sum(fn(zz, labels)))(jnp.asarray(zc))
        ax.plot(share, np.asarray(grad)[:, 1], label=label, **style)
    ax.axvline(1 / (K - 1), color="0.7", lw=0.8)
    ax.set_xlabel("confuser's share of the wrong-class probability (1/9: uniform)")
    ax.set_ylabel(r"$\partial$ loss / $\partial z_{confuser}$")
    ax.set_title(r"CCE on a wrong class ($p_g = 0.5$, K=10)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, "cce_wrong_class"))

    return paths + _plot_count_losses(out_dir, ce, ce_style, z, g)


def _plot_count_losses(out_dir, ce, ce_style, z, g) -> list:
    """Focal, then MSE-OL and LDAM for a frequent and a rare class."""
    paths = []
    focal = _loss_and_true_grad(losses.get("focal", gamma=2.0), z, g)
    fig, axes = _figure()
    _panel(
        axes,
        [("CE", *ce, ce_style), (r"focal $\gamma=2$", *focal, {"color": "C3"})],
        "focal loss (wrong-class logits equal)",
    )
    paths.append(_save(fig, out_dir, "focal"))

    # MSE with outlying label, a frequent and a rare class.
    mse = functools.partial(losses.get, "mse_ol", class_counts=COUNTS, alpha=5.0)
    curves = [("CE", *ce, ce_style)]
    for cls, name, color in [(FREQUENT, "frequent", "C4"), (RARE, "rare", "C5")]:
        label = f"MSE-OL {name} class {cls} (n={COUNTS[cls]}, target {5.0 * (1 + cls):g})"
        curves.append((label, *_loss_and_true_grad(mse(), _logits(P, cls), cls), {"color": color}))
    fig, axes = _figure()
    _panel(axes, curves, r"MSE with outlying label, $\alpha=5$, CIFAR-10-LT ratio-100 counts")
    axes[0].set_yscale("log")
    axes[0].set_ylim(1e-3, 1e3)
    paths.append(_save(fig, out_dir, "mse_ol"))

    # LDAM, a frequent and a rare class, on the scaled logits.
    scale = 30.0
    ldam = losses.get("ldam", class_counts=COUNTS, max_margin=0.5, scale=scale)
    curves = [("CE", *ce, ce_style)]
    margins = 0.5 * (COUNTS.min() / COUNTS) ** 0.25
    for cls, name, color in [(FREQUENT, "frequent", "C4"), (RARE, "rare", "C5")]:
        loss, grad = _loss_and_true_grad(ldam, _logits(P, cls, scale=scale), cls)
        label = (
            f"LDAM {name} class {cls} (margin {margins[cls]:.2f}, s*m = {scale * margins[cls]:.1f})"
        )
        curves.append((label, loss, grad / scale, {"color": color}))
    fig, axes = _figure()
    _panel(axes, curves, r"LDAM, $m_{max}=0.5$, $s=30$; x and gradient on the scaled logit $s z$")
    axes[1].set_ylabel(r"$\partial$ loss / $\partial (s z_g)$")
    paths.append(_save(fig, out_dir, "ldam"))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=os.path.join("docs", "img"))
    args = parser.parse_args(argv)
    plot_all(args.out_dir)


if __name__ == "__main__":
    main()
