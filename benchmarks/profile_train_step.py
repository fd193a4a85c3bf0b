"""Where the train step's time goes: XLA op times of a profiled step, grouped by kind.

  python -m benchmarks.profile_train_step [--model=resnet32] [--conv_impl=xla]  # --help: all

Runs benchmarks.bench_train_step's step on one random batch under ``jax.profiler`` and sums
each XLA op's own time (over steps and CPU threads) by what its computation does: ``conv
DIMS``, ``dot``, ``transpose`` (copies, slices, relayouts), ``reduce``, ``elementwise``. The
shares are the result: the op times of two threads overlap.
"""

import argparse
import collections
import glob
import gzip
import json
import re
import shutil


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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet32")
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--conv_impl", default="xla")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--trace_dir", default="/tmp/cce_jax_profile")
    args = p.parse_args()

    import jax

    from benchmarks.bench_train_step import _setup, random_batch

    shape = (args.image_size, args.image_size, 3)
    mesh, state, step = _setup(
        args.model, 10, "float32", args.width or None, shape, impl=args.conv_impl
    )
    batch = random_batch(mesh, args.batch_size, shape, 10)
    kinds = classify(step.lower(state, batch).compile().as_text())
    for n in (3, args.steps):  # warm-up, then the traced steps
        if n == args.steps:
            shutil.rmtree(args.trace_dir, ignore_errors=True)
            jax.profiler.start_trace(args.trace_dir, create_perfetto_trace=True)
        for _ in range(n):
            state, m = step(state, batch)
            jax.block_until_ready(m)
    jax.profiler.stop_trace()
    (trace,) = glob.glob(f"{args.trace_dir}/**/*perfetto_trace.json.gz", recursive=True)
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and e["name"] in kinds:
            total[kinds[e["name"]]] += e["dur"]
            count[kinds[e["name"]]] += 1
    all_us = sum(total.values())
    per_step = f"{all_us / args.steps / 1e3:.1f} ms per step (summed over threads)"
    print(
        f"{args.model} conv_impl={args.conv_impl} batch {args.batch_size}: XLA op time {per_step}"
    )
    for kind, us in total.most_common():
        share = f"{100 * us / max(all_us, 1):5.1f}%  x{count[kind] // args.steps:4d}"
        print(f"{us / args.steps / 1e3:9.1f} ms/step {share}  {kind}")


if __name__ == "__main__":
    main()
