"""Timing of short calls for the benchmarks: `timeit` and `graph_timeit`, medians over repeated calls (a pipeline's
minutes per stage: rd.stages.Laps)."""
import statistics
import time

import torch


def timeit(fn, iters: int, warmup: int) -> float:
    """Median seconds of one fn() over `iters` calls after `warmup` calls (CUDA events when a GPU is present)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def graph_timeit(fn, iters: int, warmup: int) -> float:
    """Median seconds of one replay of fn captured in a CUDA graph: the GPU's time alone, without the host's
    (Python, dispatcher, launch) overhead, which dominates small ops timed one call at a time."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):                          # warm-up on a side stream, as capture requires
        for _ in range(max(warmup, 2)):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timeit(graph.replay, iters, warmup)
