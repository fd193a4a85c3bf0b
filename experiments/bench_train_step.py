"""Train-step throughput: the JAX/flax ResNet-32 step against the same step in PyTorch.

  python -m experiments.bench_train_step [--batch_size=128] [--num_steps=20] [--dtype=float32]
      [--model=resnet32] [--skip_torch]

JAX: :func:`step_throughput` (the trainer's jitted, data-parallel step: forward,
CE loss, backward, SGD momentum 0.9 + weight decay 2e-4 on kernels, BatchNorm update) on
random 32x32x3 data over all local devices. PyTorch (benchmark-only extra, ``pip install
torch==2.13.0``): the same ResNet-32 (3x3 stem 16, 3x5 basic blocks 16/32/64, option-A
shortcuts, BatchNorm), ``torch.optim.SGD(momentum=0.9, weight_decay=2e-4)``, CE, on the
same batch size; CPU or CUDA, whichever JAX uses. Both measure ``num_steps`` steps after
warm-up and wait for the device. Prints both rates and their ratio.
"""

import argparse
import json
import os
import time

import numpy as np


def step_throughput(model_name="resnet32", batch_size=128, num_steps=20, dtype="float32", *,
                    image_shape=(32, 32, 3), num_classes=10, warmup_steps=3, num_models=None,
                    steps_per_call=1):
    """Images/s of the trainer's jitted SGD train step on fixed random data, after warm-up.

    ``num_models=S`` trains S models in one vmapped step (images/s counts all of them);
    ``steps_per_call=N`` runs N steps per call (``lax.scan``). Waits for every call.
    """
    import jax
    import optax

    from cce_jax import models, training

    mesh = training.make_mesh()
    model = models.get_model(model_name, num_classes=num_classes, dtype=dtype)
    tx = optax.chain(optax.add_decayed_weights(2e-4, mask=training.decay_mask),
                     optax.sgd(0.1, momentum=0.9))

    def ce(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    keys = jax.random.key(0) if num_models is None else jax.random.split(jax.random.key(0), num_models)
    state = training.create_train_state(model, tx, keys, tuple(image_shape), mesh)
    step = training.make_train_step(model, tx, mesh, (ce,), num_models=num_models,
                                    steps_per_call=steps_per_call)
    lead = tuple(d for d in ((steps_per_call if steps_per_call > 1 else None), num_models) if d)
    rng = np.random.default_rng(0)
    local_b = batch_size // jax.process_count()
    batch = training.shard_batch(
        {"image": rng.standard_normal((*lead, local_b, *image_shape), np.float32),
         "label": rng.integers(0, num_classes, (*lead, local_b)).astype(np.int32)},
        mesh, len(lead))
    for _ in range(warmup_steps):
        state, m = step(state, batch)
    jax.block_until_ready((state, m))
    calls = max(1, num_steps // steps_per_call)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = step(state, batch)
        jax.block_until_ready(m)
    jax.block_until_ready(state)
    return calls * steps_per_call * batch_size * (num_models or 1) / (time.perf_counter() - t0)


def torch_throughput(batch_size=128, num_steps=20, warmup_steps=3, device="cpu",
                     num_classes=10, threads=None):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = tnn.BatchNorm2d(cout)
            self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = tnn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            r = x
            if self.stride != 1 or self.pad:
                r = x[:, :, ::self.stride, ::self.stride]
                r = F.pad(r, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(y + r)

    class ResNet32(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = tnn.BatchNorm2d(16)
            blocks, cin = [], 16
            for i, w in enumerate((16, 32, 64)):
                for j in range(5):
                    blocks.append(Block(cin, w, 2 if (i > 0 and j == 0) else 1))
                    cin = w
            self.blocks = tnn.Sequential(*blocks)
            self.head = tnn.Linear(64, num_classes)

        def forward(self, x):
            x = F.relu(self.bn(self.stem(x)))
            x = self.blocks(x)
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = ResNet32().to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    for _ in range(warmup_steps):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(num_steps):
        step()
    sync()
    return num_steps * batch_size / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet32")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--num_steps", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch intra-op threads (0: its default, and 1 as well on CPU)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()

    import jax

    platform = jax.devices()[0].platform
    jax_ips = step_throughput(args.model, batch_size=args.batch_size,
                                       num_steps=args.num_steps, dtype=args.dtype)
    out = {"model": args.model, "batch_size": args.batch_size, "dtype": args.dtype,
           "platform": platform, "devices": jax.device_count(),
           "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "jax_images_per_s": jax_ips}
    print(f"JAX   {args.model} {args.dtype} batch {args.batch_size} on {jax.device_count()} "
          f"{platform} device(s): {jax_ips:8.1f} images/s", flush=True)
    if not args.skip_torch and args.model == "resnet32":
        try:
            import torch
        except ImportError:
            print("PyTorch not installed (pip install torch==2.13.0): skipping the comparison")
        else:
            dev = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"
            default_threads = torch.get_num_threads()
            thread_counts = [default_threads]
            if dev == "cpu" and default_threads > 1 and not args.torch_threads:
                thread_counts.append(1)  # on a busy machine OpenMP threads can spin-wait
            if args.torch_threads:
                thread_counts = [args.torch_threads]
            rates = {}
            for n in thread_counts:
                rates[n] = torch_throughput(args.batch_size, args.num_steps, device=dev,
                                            threads=n)
                print(f"torch {args.model} float32 batch {args.batch_size} on {dev} "
                      f"({n} threads): {rates[n]:8.1f} images/s", flush=True)
            torch.set_num_threads(default_threads)
            best = max(rates.values())
            out.update(torch_images_per_s=best, torch_images_per_s_by_threads=rates,
                       torch_version=torch.__version__, ratio_jax_over_torch=jax_ips / best)
            print(f"ratio JAX / torch (best torch): {jax_ips / best:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
