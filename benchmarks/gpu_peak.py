"""The two ceilings of the GPU at hand, measured: a bf16 matrix product (8192^3, random data) and a
device-to-device copy. The embed and train benchmarks report their FLOP rate against the data
sheet's dense bf16 peak; this says what the card in hand reaches, for comparison: in bursts
(median of 10), sustained for 8 s (a power-capped card falls there), and for the matrix shapes of
an embedding batch.

Then the host side that per-residue embedding depends on: writing 1 GiB of fresh host memory,
and copying 1 GiB from the GPU into fresh pageable memory, into the same pageable memory again
(no new pages), into pinned memory, and into pinned memory then a new host array (what
`protrans embed` does with per-residue rows).

    python benchmarks/gpu_peak.py
"""

from __future__ import annotations

import statistics
import sys


def _time(fn, repeats: int = 10) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    import argparse

    # (no options: --help must not start the measurement)
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = _time(lambda: a @ b)
    print(f"{torch.cuda.get_device_name()}: bf16 matmul {n}^3 {2 * n**3 / seconds / 1e12:.0f} TFLOP/s (median of 10)")
    sustained(a, b)
    shapes(torch)
    x = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    seconds = _time(lambda: y.copy_(x))
    print(f"copy: {2 * x.numel() * x.element_size() / seconds / 1e12:.2f} TB/s (bytes read + written, 1 GiB)")
    host_memory(x)
    return 0


def sustained(a, b, seconds: float = 8.0) -> None:
    """The same product back to back for `seconds`, rate per second: a card that holds its clock
    only in bursts (a power cap) shows a falling rate here while the median above looks fine."""
    import time

    import torch

    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    rates, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0, count = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            for _ in range(20):
                a @ b
            torch.cuda.synchronize()
            count += 20
        rates.append(flops * count / (time.perf_counter() - t0) / 1e12)
    print("sustained bf16 matmul, TFLOP/s per second: " + " ".join(f"{r:.0f}" for r in rates))


def shapes(torch) -> None:
    """bf16 products of the shapes an embedding batch of ~4000 tokens runs (ProtT5-XL: 1024 ->
    4096 attention projections, 1024 -> 16384 -> 1024 feed-forward; ProtBert: 1024 -> 4096), with
    a token count that is not a multiple of 8 as length-sorted batches make it."""
    for m in (3913, 3920, 31999, 32000):
        for k, n in ((1024, 4096), (1024, 16384), (16384, 1024)):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            seconds = _time(lambda: torch.nn.functional.linear(x, w))
            print(f"linear ({m} x {k}) -> {n}: {2 * m * k * n / seconds / 1e12:.0f} TFLOP/s")


def host_memory(x) -> None:
    import time

    import torch

    gib = x.numel() * x.element_size() / 2**30

    def rate(fn) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return gib / (time.perf_counter() - start)

    print(f"host: fresh memory written {rate(lambda: torch.empty_like(x, device='cpu').fill_(1)):.2f} GiB/s")
    pageable = torch.empty_like(x, device="cpu")
    print(f"host: GPU -> fresh pageable {rate(lambda: pageable.copy_(x)):.2f} GiB/s")
    print(f"host: GPU -> same pageable again {rate(lambda: pageable.copy_(x)):.2f} GiB/s")
    pinned = torch.empty_like(x, device="cpu").pin_memory()
    pinned.copy_(x)
    print(f"host: GPU -> pinned {rate(lambda: pinned.copy_(x)):.2f} GiB/s")
    print(f"host: GPU -> .cpu() (new tensor each time) {rate(lambda: x.cpu()):.2f} GiB/s")
    # numpy has no bfloat16: the same bytes as uint8 (what the copy moves is what is timed)
    print(f"host: GPU -> pinned -> new array (embed's path) "
          f"{rate(lambda: (pinned.copy_(x), pinned.view(torch.uint8).numpy().copy())):.2f} GiB/s")
    # Another dtype at the far end (bf16 rows, float32 storage): a blocking copy_ converts on the
    # host through a fresh pageable temporary; embed converts on the GPU first. Rates per GiB of bf16.
    pinned = None  # (released before the float32 buffer is pinned)
    wide = torch.empty(x.shape, dtype=torch.float32).pin_memory()
    print(f"host: GPU bf16 -> pinned float32, copy_ converting (embed before) {rate(lambda: wide.copy_(x)):.2f} GiB/s")
    print(f"host: GPU bf16 -> float32 on the GPU -> pinned (embed now) {rate(lambda: wide.copy_(x.float())):.2f} GiB/s")


if __name__ == "__main__":
    sys.exit(main())
