"""The two ceilings of the GPU at hand, measured: a bf16 matrix product (8192^3, random data) and a
device-to-device copy. The embed and train benchmarks report their FLOP rate against the data
sheet's dense bf16 peak; this says what the card in hand reaches, for comparison.

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


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = _time(lambda: a @ b)
    print(f"{torch.cuda.get_device_name()}: bf16 matmul {n}^3 {2 * n**3 / seconds / 1e12:.0f} TFLOP/s (median of 10)")
    x = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    seconds = _time(lambda: y.copy_(x))
    print(f"copy: {2 * x.numel() * x.element_size() / seconds / 1e12:.2f} TB/s (bytes read + written, 1 GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
