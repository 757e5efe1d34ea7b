"""Measured profile: time, KV, activation, weight and peak bytes of every planning unit with torch.

The model is built on the meta device (:mod:`ppplan.profiler.models`); one planning unit at a time
is materialised on the measuring device with random weights (fixed seed), measured, and sent back
to meta, so a 405B or 671B architecture profiles on one GPU. Units with the same ``signature``
(class, parameter shapes, attention kind) are measured once and their numbers reused: a homogeneous
80-layer model costs one decoder layer's measurement.

Per distinct unit and grid point:

* prefill: one sequence of ``tokens`` tokens through the unit with an empty cache;
* decode: ``batch`` sequences of one new token each over a KV cache already filled with ``context``
  tokens (filled by a real prefill of one sequence, replicated over the batch), because attention
  cost grows with the context.

Timing runs under ``torch.inference_mode()`` after ``WARMUP_STEPS_*`` untimed steps: CUDA events and
``torch.cuda.synchronize()`` on GPU, ``time.perf_counter`` on CPU; the median and the interquartile
range of the timed steps are kept. KV bytes per token are read from the real transformers cache
object after a forward; weight bytes from the materialised parameters; the transient peak from
``torch.cuda.max_memory_allocated`` deltas (GPU) or a dispatch-mode count of the tensors the forward
allocates and frees (CPU).

Modules: :mod:`.grid` (grid points and defaults), :mod:`.device` (device resolution and the timer),
:mod:`.alloc` (CPU allocation tracking), :mod:`.units` (materialising a unit; embedding and head),
:mod:`.decoder` (a decoder layer), :mod:`.memory` (memory and time estimates of a grid), :mod:`.run`
(the run and its CLI glue). Everything here imports torch; :func:`run_profile_cli` is what
``ppplan profile --device`` calls.
"""

from ppplan.profiler.measure.device import host_available_bytes, resolve_cuda_gpu
from ppplan.profiler.measure.errors import MeasureError
from ppplan.profiler.measure.grid import CPU_GRIDS, CUDA_GRIDS, GRID_ENV, ProfileGrid, parse_grid
from ppplan.profiler.measure.run import iter_points, run_profile, run_profile_cli
from ppplan.profiler.measure.units import SEED, UnitMeasurement

__all__ = [
    "CPU_GRIDS",
    "CUDA_GRIDS",
    "GRID_ENV",
    "SEED",
    "MeasureError",
    "ProfileGrid",
    "UnitMeasurement",
    "host_available_bytes",
    "iter_points",
    "parse_grid",
    "resolve_cuda_gpu",
    "run_profile",
    "run_profile_cli",
]
