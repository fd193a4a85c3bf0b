"""Train-step throughput of the accelerator paths, against the same step in PyTorch.

  python -m benchmarks.bench_train_step [--model=resnet32] [--modes=synthetic,conv,...]  # --help

Each row: images/s of the trainer's jitted SGD step (ResNet-32 CIFAR shapes by default) after
warm-up, waiting for every call, and its ratio to this run's first row. Modes: ``synthetic``
(one fixed batch), ``conv`` (each ``conv_impl``), ``tf``/``device`` (CIFAR-10-LT r100 through
``cce_jax.data.build``), ``input`` (those two pipelines alone: their batches on the devices,
no step), ``spc`` (``steps_per_call`` steps a call), ``seeds`` (S vmapped models) and
``torch`` (the same ResNet-32 in PyTorch, the [bench] extra).

``--modes=profile``: where the step's time goes (docs/training.md). It runs ``--num_steps``
steps of ``--conv_impl`` on one random batch under ``jax.profiler`` and sums each XLA op's own
time (over steps and CPU threads) by what its computation does: ``conv DIMS``, ``dot``,
``transpose`` (copies, slices, relayouts), ``reduce``, ``elementwise``. The shares are the
result: the op times of two threads overlap.
"""

import argparse
import collections
import glob
import gzip
import itertools
import json
import os
import re
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow/JAX load
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np


def _setup(model_name, num_classes, dtype, width, shape, num_models=None, impl=None, spc=1):
    """The trainer's SGD train step and state for ``model_name`` on every device."""
    import jax
    import optax

    from cce_jax import models, parallel
    from cce_jax.training import optimizer, steps

    mesh = parallel.make_mesh()
    kw = {"conv_impl": impl} if impl else {}  # None: the model's default
    model = models.get_model(model_name, num_classes=num_classes, dtype=dtype, width=width, **kw)
    tx = optax.chain(
        optax.add_decayed_weights(2e-4, mask=optimizer.decay_mask), optax.sgd(0.1, momentum=0.9)
    )
    key = jax.random.key(0)
    keys = key if num_models is None else jax.random.split(key, num_models)
    state = steps.create_train_state(model, tx, keys, tuple(shape), mesh)
    ce = optax.softmax_cross_entropy_with_integer_labels
    step = steps.make_train_step(model, tx, mesh, (ce,), num_models=num_models, steps_per_call=spc)
    return mesh, state, step


def random_batch(mesh, batch_size, shape, num_classes, lead=()):
    """One fixed random batch of this process (``lead``: leading axes), sharded on ``mesh``."""
    from cce_jax import parallel

    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((*lead, batch_size, *shape), np.float32)}
    batch["label"] = rng.integers(0, num_classes, (*lead, batch_size)).astype(np.int32)
    return parallel.shard_batch(batch, mesh, len(lead))


def step_throughput(a, width, num_models=None, spc=1, impl=None, source=None, alone=False):
    """Images/s of the step of ``a.model`` on one fixed random batch (``source``: fed by
    ``cce_jax.data.build``'s ``pipeline``, CIFAR-10-LT r100 of ``a.source``; ``alone``: that
    pipeline without the step), after 3 warm-up calls, waiting for every call."""
    import jax

    from cce_jax import data as data_lib
    from cce_jax import parallel

    shape, k, mesh = (32, 32, 3), 10, parallel.make_mesh()
    if source:
        cfg = data_lib.default_config()
        cfg.source, cfg.profile, cfg.ratio, cfg.pipeline = a.source, "exp", 100.0, source
        data = data_lib.build(
            cfg, seed=0, global_batch_size=a.batch_size, eval_batch_size=500, mesh=mesh
        )
        shape, k = data.info.image_shape, data.info.num_classes
        epochs = itertools.chain.from_iterable(map(data.train_epoch, itertools.count()))
        batches = (parallel.shard_batch(b, mesh) for b in epochs)
    if alone:  # the "step" returns the batch: waiting for it waits for the pipeline
        state, step = None, lambda state, batch: (state, batch)
    else:
        _, state, step = _setup(a.model, k, a.dtype, width, shape, num_models, impl, spc)
    if not source:
        lead = tuple(d for d in ((spc if spc > 1 else None), num_models) if d)
        batch = random_batch(mesh, a.batch_size // jax.process_count(), shape, k, lead)
        batches = itertools.repeat(batch)
    for _ in range(3):
        state, m = step(state, next(batches))
    jax.block_until_ready((state, m))
    calls = max(1, a.num_steps // spc)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = step(state, next(batches))
        jax.block_until_ready(m)
    return calls * spc * a.batch_size * (num_models or 1) / (time.perf_counter() - t0)


def torch_throughput(batch_size=128, num_steps=20, warmup_steps=3, device="cpu", threads=None):
    """Images/s of the same ResNet-32 SGD step (option-A shortcuts) in PyTorch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if threads:
        torch.set_num_threads(threads)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            conv = lambda i, s: nn.Conv2d(i, cout, 3, s, 1, bias=False)
            layers = [conv(cin, stride), nn.BatchNorm2d(cout), nn.ReLU(), conv(cout, 1)]
            self.f = nn.Sequential(*layers, nn.BatchNorm2d(cout))
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            r = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
            r = F.pad(r, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)) if self.pad else r
            return F.relu(self.f(x) + r)

    widths = [w for w in (16, 32, 64) for _ in range(5)]
    blocks = [Block(i, w, 1 + (w != i)) for i, w in zip([16, *widths[:-1]], widths)]
    stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    torch.manual_seed(0)
    model = nn.Sequential(*stem, *blocks, *head).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def steps(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if device != "cpu":
            torch.cuda.synchronize()

    steps(warmup_steps)
    t0 = time.perf_counter()
    steps(num_steps)
    return num_steps * batch_size / (time.perf_counter() - t0)


def classify(hlo_text: str) -> dict:
    """HLO instruction name -> kind, from the compiled module's text."""
    comps, cur = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line) if line[:1] not in (" ", "") else None
        if m:
            cur = comps.setdefault(m.group(1), [])
        elif cur is not None:
            cur.append(line)

    def conv(text):
        labels = re.search(r"dim_labels=(\S+?)[,} ]", text)
        return "conv " + (labels.group(1) if labels else "")

    def kind_of(comp, depth=0):
        body = "\n".join(comps.get(comp, []))
        if "convolution(" in body:
            return conv(body)
        if re.search(r" dot\(", body):
            return "dot"
        if "transpose(" in body or "slice(" in body:
            return "transpose"
        if "reduce(" in body or "reduce-window" in body:
            return "reduce"
        for called in re.findall(r"calls=%?([\w.\-]+)", body) if depth < 3 else ():
            k = kind_of(called, depth + 1)
            if k != "elementwise":
                return k
        return "elementwise"

    kinds = {}
    for lines in comps.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(", line)
            if not m:
                continue
            name, op = m.groups()
            if op == "fusion":
                kinds[name] = kind_of(re.search(r"calls=%?([\w.\-]+)", line).group(1))
            else:
                kinds[name] = conv(line) if op == "convolution" else op
                kinds[name] = "transpose" if op in ("transpose", "copy", "slice") else kinds[name]
    return kinds


def profile(a, width):
    """Prints the XLA op times of ``a.num_steps`` steps on one random batch under
    ``jax.profiler``, summed over the steps and CPU threads by :func:`classify`'s kinds."""
    import jax

    shape = (a.image_size, a.image_size, 3)
    mesh, state, step = _setup(a.model, 10, a.dtype, width, shape, impl=a.conv_impl)
    batch = random_batch(mesh, a.batch_size, shape, 10)
    kinds = classify(step.lower(state, batch).compile().as_text())
    for n in (3, a.num_steps):  # warm-up, then the traced steps
        if n == a.num_steps:
            shutil.rmtree(a.trace_dir, ignore_errors=True)
            jax.profiler.start_trace(a.trace_dir, create_perfetto_trace=True)
        for _ in range(n):
            state, m = step(state, batch)
            jax.block_until_ready(m)
    jax.profiler.stop_trace()
    (trace,) = glob.glob(f"{a.trace_dir}/**/*perfetto_trace.json.gz", recursive=True)
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and e["name"] in kinds:
            total[kinds[e["name"]]] += e["dur"]
            count[kinds[e["name"]]] += 1
    all_us = sum(total.values())
    per_step = f"{all_us / a.num_steps / 1e3:.1f} ms per step (summed over threads)"
    print(f"conv_impl={a.conv_impl}: XLA op time {per_step}")
    for kind, us in total.most_common():
        share = f"{100 * us / max(all_us, 1):5.1f}%  x{count[kind] // a.num_steps:4d}"
        print(f"{us / a.num_steps / 1e3:9.1f} ms/step {share}  {kind}")


def _rows(args, modes, width, record):
    """Measures the rows of ``modes`` in order; ``record(name, images/s, note)`` each."""
    if "synthetic" in modes or not modes:
        record("synthetic batch, loop", step_throughput(args, width))
    for impl in ("xla", "shifted_matmul") if "conv" in modes else ():
        record(f"conv_impl={impl}", step_throughput(args, width, impl=impl), "synthetic")
    pipes = [(m, False) for m in ("tf", "device") if m in modes]
    for pipe, alone in pipes + [(m, True) for m in ("tf", "device") if "input" in modes]:
        try:
            ips = step_throughput(args, width, source=pipe, alone=alone)
        except Exception as e:  # e.g. no tensorflow on this machine
            print(f"{pipe} pipeline: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            continue
        record(f"{pipe} pipeline, {'alone' if alone else 'loop'}", ips, "CIFAR-10-LT r100")
    if "spc" in modes and args.steps_per_call > 1:
        ips = step_throughput(args, width, spc=args.steps_per_call)
        record(f"steps_per_call={args.steps_per_call}", ips)
    for s in [int(x) for x in args.seeds.split(",") if x] if "seeds" in modes else ():
        record(f"seeds S={s} (vmap)", step_throughput(args, width, num_models=s), "all S models")
    if "profile" in modes:
        profile(args, width)
    if "torch" not in modes or args.model != "resnet32" or width:
        return
    import jax

    try:
        import torch
    except ImportError:
        return print("torch: not installed (the [bench] extra): skipped")
    dev = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
    threads = [args.torch_threads or torch.get_num_threads()]
    if dev == "cpu" and not args.torch_threads and threads[0] > 1:
        threads.append(1)  # on a busy machine OpenMP threads can spin-wait
    for n in threads:
        ips = torch_throughput(args.batch_size, args.num_steps, device=dev, threads=n)
        record(f"torch {dev} ({n} threads)", ips, f"torch {torch.__version__} float32")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet32")
    p.add_argument("--width", type=int, default=0, help="first-stage width (0: the model's own)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--num_steps", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--modes", default="synthetic,conv,tf,device,spc,seeds,torch")
    p.add_argument("--seeds", default="1,2,4,8", help="model counts S of the seeds mode")
    p.add_argument("--steps_per_call", type=int, default=8)
    p.add_argument("--source", default="cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--torch_threads", type=int, default=0, help="torch threads (0: its default)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--conv_impl", default="xla", help="the profile's convolution")
    p.add_argument("--image_size", type=int, default=32, help="the profile's image side")
    p.add_argument("--trace_dir", default="/tmp/cce_jax_profile", help="the profile's trace")
    args = p.parse_args()

    import jax

    dev, width, rows = jax.devices()[0], args.width or None, []
    what = f"{args.model} (width {width or 'default'}) {args.dtype} batch {args.batch_size}"
    print(f"{what} on {jax.device_count()} {dev.platform} device(s) [{dev.device_kind}]")

    def record(name, ips, note=""):
        rows.append({"mode": name, "images_per_s": ips, "note": note})
        ratio = ips / rows[0]["images_per_s"]  # against the first row of this run
        print(f"{name:<28} {ips:10.1f} images/s  {ratio:5.2f}x  {note}", flush=True)

    _rows(args, [m for m in args.modes.split(",") if m], width, record)
    if args.json:
        out = dict(vars(args), width=width, platform=dev.platform, device_kind=dev.device_kind)
        out.update(devices=jax.device_count(), cpu_count=os.cpu_count(), jax=jax.__version__)
        with open(args.json, "w") as f:
            json.dump(dict(out, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
