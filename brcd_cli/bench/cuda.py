"""GPU benchmarks: brcd's CUDA kernels against plain torch, in the same run, on the same data.

``brcd bench search --device cuda``: exact k-NN of random packed codes by the
GPU backend that would serve a user (extension, else CuPy) against the torch
reference a user would otherwise write (xor + popcount + topk, with the same
tie order). ``exact`` is true only when both return identical (distance,
index) lists for every query and a sample also matches the CPU kernels. The
report adds codes compared per second and the memory-bandwidth bound on it:
one database pass per query batch at the device-to-device copy bandwidth
measured in the same run.

``brcd bench loss-kernel --device cuda``: forward + backward of the dense masked
similarity of the BRCD loss (2B rows of L-bit relaxed codes, one bit mask per
row) through the fused kernels against the torch composite (the reference
arithmetic under autograd), with the largest value and gradient differences.

Times are medians over repeats of CUDA-event-timed runs after warm-ups.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..errors import BrcdError


def _require_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise BrcdError("--device cuda needs a visible CUDA device; none is (torch.cuda.is_available() is False)")
    return torch


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of ``fn`` by CUDA events, after ``warmup`` untimed calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), measured now."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), repeats=5, warmup=2)
    return 2 * nbytes / (ms * 1e-3) / 1e9


@dataclass(frozen=True)
class GpuSearchBenchConfig:
    """Code length, database size, queries per batch, k, repeats, seed, CPU-checked queries, backend."""

    bits: int = 64
    n: int = 10_000_000
    queries: int = 1000
    k: int = 100
    repeats: int = 3
    seed: int = 0
    check_queries: int = 4
    backend: Optional[str] = None

    def validate(self) -> None:
        if self.bits <= 0 or self.bits % 8:
            raise BrcdError(f"--bits must be a positive multiple of 8, got {self.bits}")
        for name in ("n", "queries", "k", "repeats"):
            if getattr(self, name) < 1:
                raise BrcdError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.check_queries < 0:
            raise BrcdError(f"--check-queries must be >= 0, got {self.check_queries}")


def run_gpu_search_bench(config: GpuSearchBenchConfig) -> dict[str, Any]:
    """k-NN on the GPU: brcd's backend vs the torch reference; JSON-ready report."""
    config.validate()
    torch = _require_cuda()
    from .. import kernels
    from ..kernels import cuda, gpu_inputs
    from ..kernels import torch_reference_gpu as torch_ref

    gen = torch.Generator(device="cuda").manual_seed(config.seed)
    n_bytes = config.bits // 8
    db = torch.randint(0, 256, (config.n, n_bytes), dtype=torch.uint8, device="cuda", generator=gen)
    q = torch.randint(0, 256, (config.queries, n_bytes), dtype=torch.uint8, device="cuda", generator=gen)
    try:
        backend = config.backend or cuda.active_gpu_backend()
        brcd_search = lambda: cuda.knn(q, db, config.k, backend=backend)  # noqa: E731
        brcd_d, brcd_i = brcd_search()
    except (ValueError, RuntimeError) as exc:
        raise BrcdError(str(exc)) from None
    words = gpu_inputs.min_words(n_bytes)
    qw, dbw = gpu_inputs.to_words(q, words), gpu_inputs.to_words(db, words)
    torch_search = lambda: torch_ref.knn(qw, dbw, config.k)  # noqa: E731
    torch_d, torch_i = torch_search()

    brcd_ms = _median_ms(brcd_search, config.repeats)
    torch_ms = _median_ms(torch_search, config.repeats)
    exact = bool(torch.equal(brcd_d, torch_d) and torch.equal(brcd_i, torch_i))
    if config.check_queries:
        rows = torch.randperm(config.queries, generator=torch.Generator().manual_seed(config.seed))[: config.check_queries]
        cpu_d, cpu_i = kernels.knn(q[rows.cuda()].cpu().numpy(), db.cpu().numpy(), config.k)
        exact = exact and np.array_equal(brcd_d[rows.cuda()].cpu().numpy(), cpu_d) and np.array_equal(
            brcd_i[rows.cuda()].cpu().numpy(), cpu_i
        )
    bandwidth = copy_bandwidth_gbs()
    pairs = config.queries * config.n
    props = torch.cuda.get_device_properties(0)
    return {
        **asdict(config),
        "backend": backend,
        "device": props.name,
        "brcd_ms": round(brcd_ms, 3),
        "torch_ms": round(torch_ms, 3),
        "brcd_qps": round(config.queries / (brcd_ms * 1e-3), 1),
        "torch_qps": round(config.queries / (torch_ms * 1e-3), 1),
        "speedup": round(torch_ms / brcd_ms, 2),
        "exact": exact,
        "exact_checked_by": "torch reference on every query"
        + (f", CPU kernels ({kernels.active_backend()}) on {config.check_queries} sampled queries" if config.check_queries else ""),
        "codes_compared_per_s": float(f"{pairs / (brcd_ms * 1e-3):.4g}"),
        "copy_bandwidth_gbs": round(bandwidth, 1),
        # One read of the database per query batch at copy bandwidth (half of it is the read).
        "bandwidth_bound_codes_per_s": float(f"{(bandwidth / 2 * 1e9) / n_bytes * config.queries:.4g}"),
        "single_pass_bound_codes_per_s_per_query": float(f"{(bandwidth / 2 * 1e9) / n_bytes:.4g}"),
    }


@dataclass(frozen=True)
class LossBenchConfig:
    """Rows (2B), code length, repeats, seed and dtype of the loss-kernel benchmark."""

    rows: int = 512
    bits: int = 64
    repeats: int = 50
    seed: int = 0
    dtype: str = "float32"

    def validate(self) -> None:
        if self.rows < 2 or self.bits < 1 or self.repeats < 1:
            raise BrcdError("need --rows >= 2, --bits >= 1 and --repeats >= 1")
        if self.dtype not in ("float32", "float64"):
            raise BrcdError(f"--dtype must be float32 or float64, got {self.dtype!r}")


def run_loss_bench(config: LossBenchConfig) -> dict[str, Any]:
    """Forward + backward of masked_similarity: fused kernels vs the torch composite, same inputs."""
    config.validate()
    torch = _require_cuda()
    from ..kernels import cuda, reference

    try:
        chosen = cuda._dense_launcher()
    except (ValueError, RuntimeError) as exc:  # a forced backend (BRCD_GPU_BACKEND) that is unknown or cannot load
        raise BrcdError(str(exc)) from None
    if chosen is None:
        raise BrcdError(f"no GPU kernel backend for the loss kernel: {cuda.available_gpu_backends()}")
    name, launcher = chosen
    dtype = getattr(torch, config.dtype)
    gen = torch.Generator(device="cuda").manual_seed(config.seed)
    z = torch.tanh(torch.randn(config.rows, config.bits, device="cuda", dtype=dtype, generator=gen))
    mask = (torch.rand(config.rows, config.bits, device="cuda", generator=gen) > 0.3).to(dtype)
    grad_out = torch.randn(config.rows, config.rows, device="cuda", dtype=dtype, generator=gen)

    def composite() -> tuple[Any, Any]:
        a = z.detach().requires_grad_(True)
        out = reference.masked_similarity_forward(a, a, mask)
        (grad,) = torch.autograd.grad(out, a, grad_out)
        return out, grad

    def fused() -> tuple[Any, Any]:
        out = cuda.masked_similarity_forward(launcher, z, z, mask)
        ga, gb, _ = cuda.masked_similarity_backward(launcher, grad_out, z, z, mask, (True, True, False))
        return out, ga + gb  # a and b are the same tensor in the loss: z against itself

    want_out, want_grad = composite()
    got_out, got_grad = fused()
    op_ms = None
    status = cuda.register_cuda_kernels()
    if status.startswith("registered"):
        from ..kernels import dense_ops

        def through_op() -> tuple[Any, Any]:
            a = z.detach().requires_grad_(True)
            out = dense_ops.masked_similarity(a, a, mask)
            (grad,) = torch.autograd.grad(out, a, grad_out)
            return out, grad

        op_out, op_grad = through_op()
        op_diff = max(float((op_out - want_out).abs().max()), float((op_grad - want_grad).abs().max()))
        op_ms = _median_ms(through_op, config.repeats, warmup=3)
    else:
        op_diff = None
    fused_ms = _median_ms(fused, config.repeats, warmup=3)
    composite_ms = _median_ms(composite, config.repeats, warmup=3)
    return {
        **asdict(config),
        "backend": name,
        "device": torch.cuda.get_device_properties(0).name,
        "fused_ms": round(fused_ms, 4),
        "composite_ms": round(composite_ms, 4),
        "speedup": round(composite_ms / fused_ms, 2),
        "op_registration": status,
        "op_ms": None if op_ms is None else round(op_ms, 4),
        "op_speedup": None if op_ms is None else round(composite_ms / op_ms, 2),
        "max_abs_diff_value": float((got_out - want_out).abs().max()),
        "max_abs_diff_grad": float((got_grad - want_grad).abs().max()),
        "max_abs_diff_op": op_diff,
        "within_1e-5": bool(
            float((got_out - want_out).abs().max()) <= 1e-5 and float((got_grad - want_grad).abs().max()) <= 1e-5
        ),
    }


def format_search_report(report: dict[str, Any]) -> list[str]:
    """Terminal lines for run_gpu_search_bench (the --json output carries the same numbers)."""
    return [
        f"{report['bits']}-bit codes, n={report['n']}, queries={report['queries']}, k={report['k']}, "
        f"{report['device']}, backend={report['backend']}",
        f"brcd   {report['brcd_qps']:>14,.0f} queries/s  ({report['codes_compared_per_s']:.3g} codes/s)",
        f"torch  {report['torch_qps']:>14,.0f} queries/s",
        f"speedup {report['speedup']:.2f}x over the torch reference (xor + popcount + topk)",
        f"bandwidth bound {report['bandwidth_bound_codes_per_s']:.3g} codes/s at {report['copy_bandwidth_gbs']} GB/s copy",
        f"exact: {report['exact']} ({report['exact_checked_by']})",
    ]


def format_loss_report(report: dict[str, Any]) -> list[str]:
    """Terminal lines for run_loss_bench."""
    return [
        f"masked similarity fwd+bwd, {report['rows']} rows x {report['bits']} bits, {report['dtype']}, "
        f"{report['device']}, backend={report['backend']}",
        f"fused     {report['fused_ms']:.4f} ms",
        f"composite {report['composite_ms']:.4f} ms",
        f"speedup {report['speedup']:.2f}x; through the torch op: {report['op_speedup']}x ({report['op_registration']})",
        f"max |diff| value {report['max_abs_diff_value']:.3g}, grad {report['max_abs_diff_grad']:.3g}",
    ]
