"""ppplan profiler: model descriptions, the analytic cost profile and (with torch) measured profiles.

Importing this package does not import torch; only :mod:`ppplan.profiler.models` (meta-device model
building) and :mod:`ppplan.profiler.measure` do, so planning a preset never loads torch.
"""
