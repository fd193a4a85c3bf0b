"""A picture of the losses: each loss and its gradient on the true logit against p_g.

    python -m benchmarks.plot_losses [--out_dir docs/img]     # writes losses_*.png

K = 10, the wrong-class logits 0, ``z_g = log(9 p_g / (1 - p_g))``; class counts (MSE-OL,
LDAM) CIFAR-10-LT's at ratio 100; LDAM's x axis and gradient on the scaled logits. A second
CCE figure: the gradient on a "confuser" wrong class at ``p_g = 0.5``. See docs/losses.md.
"""

import argparse
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
P = np.linspace(0.002, 0.998, 499)
CE_STYLE = {"color": "0.4", "ls": "--", "lw": 1.2}
CCE = [  # label, loss name (losses.PRESETS), style
    (r"CCE paper: $\gamma=-1$, $/(K-1)$", "cce_paper", {"color": "C1"}),
    (r"CCE public code: $\gamma=+1$, $/K$", "cce_code", {"color": "C2", "ls": ":"}),
]


def _curve(fn, g, scale=1.0):
    """Per-row loss and d loss / d z_g, the wrong classes at 0 and softmax(scale * z)_g = P."""
    z = np.zeros((len(P), K), np.float32)
    z[:, g] = np.log((K - 1) * P / (1 - P)) / scale
    loss, pull = jax.vjp(lambda zz: fn(zz, jnp.full((len(P),), g, jnp.int32)), jnp.asarray(z))
    return np.asarray(loss), np.asarray(pull(jnp.ones_like(loss))[0])[:, g]


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, f"losses_{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")
    return path


def _figure(curves, title, grad_label=r"$\partial$ loss / $\partial z_g$", ce_style=CE_STYLE):
    """curves: (label, (loss, grad), style). Left: loss; right: gradient. Returns the axes."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, (loss, grad), style in [("CE", _curve(losses.get("ce"), 0), ce_style), *curves]:
        axes[0].plot(P, loss, label=label, **style)
        axes[1].plot(P, grad, label=label, **style)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel(grad_label)
    for ax in axes:
        ax.set_xlabel(r"true-class probability $p_g$")
        ax.axhline(0.0, color="0.7", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _confuser(out_dir):
    """CCE on the wrong classes: the gradient on a "confuser" logit at p_g = 0.5."""
    share = np.linspace(1 / (K - 1), 0.99, 300)
    c = (K - 2) * share / (1 - share)  # exp(z_confuser); other wrong logits 0
    zc = np.zeros((len(share), K), np.float32)
    zc[:, 1], zc[:, 0] = np.log(c), np.log(c + K - 2)  # p_g = 0.5
    fig, ax = plt.subplots(1, 1, figsize=(5.2, 3.4))
    labels = jnp.zeros((len(share),), jnp.int32)
    for label, name, style in [("CE", "ce", CE_STYLE), *CCE]:
        fn = losses.get(name)
        grad = jax.grad(lambda zz, fn=fn: jnp.sum(fn(zz, labels)))(jnp.asarray(zc))
        ax.plot(share, np.asarray(grad)[:, 1], label=label, **style)
    ax.axvline(1 / (K - 1), color="0.7", lw=0.8)
    ax.set_xlabel("confuser's share of the wrong-class probability (1/9: uniform)")
    ax.set_ylabel(r"$\partial$ loss / $\partial z_{confuser}$")
    ax.set_title(r"CCE on a wrong class ($p_g = 0.5$, K=10)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "cce_wrong_class")


def plot_all(out_dir: str) -> list:
    os.makedirs(out_dir, exist_ok=True)
    fig, _ = _figure([], "cross entropy (K=10, wrong-class logits equal)", ce_style={"color": "C0"})
    paths = [_save(fig, out_dir, "ce")]
    curves = [(label, _curve(losses.get(name), 0), st) for label, name, st in CCE]
    title = "complement cross entropy, both signs (wrong-class logits equal)"
    paths += [_save(_figure(curves, title)[0], out_dir, "cce"), _confuser(out_dir)]
    focal = [(r"focal $\gamma=2$", _curve(losses.get("focal", gamma=2.0), 0), {"color": "C3"})]
    fig, _ = _figure(focal, "focal loss (wrong-class logits equal)")
    paths.append(_save(fig, out_dir, "focal"))
    classes = [(0, "frequent", {"color": "C4"}), (K - 1, "rare", {"color": "C5"})]
    mse = losses.get("mse_ol", class_counts=COUNTS, alpha=5.0)
    curves = [(f"MSE-OL {name} class {g} (n={COUNTS[g]}, target {5.0 * (1 + g):g})",
               _curve(mse, g), st) for g, name, st in classes]  # fmt: skip
    title = r"MSE with outlying label, $\alpha=5$, CIFAR-10-LT ratio-100 counts"
    fig, axes = _figure(curves, title)
    axes[0].set_yscale("log")
    axes[0].set_ylim(1e-3, 1e3)
    paths.append(_save(fig, out_dir, "mse_ol"))
    s, margins = 30.0, 0.5 * (COUNTS.min() / COUNTS) ** 0.25
    ldam = losses.get("ldam", class_counts=COUNTS, max_margin=0.5, scale=s)
    curves = []
    for g, name, st in classes:
        loss, grad = _curve(ldam, g, scale=s)
        label = f"LDAM {name} class {g} (margin {margins[g]:.2f}, s*m = {s * margins[g]:.1f})"
        curves.append((label, (loss, grad / s), st))
    title = r"LDAM, $m_{max}=0.5$, $s=30$; x and gradient on the scaled logit $s z$"
    fig, _ = _figure(curves, title, r"$\partial$ loss / $\partial (s z_g)$")
    return paths + [_save(fig, out_dir, "ldam")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=os.path.join("docs", "img"))
    plot_all(parser.parse_args(argv).out_dir)


if __name__ == "__main__":
    main()
