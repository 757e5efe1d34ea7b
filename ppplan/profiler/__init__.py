"""ppplan profiler: model descriptions, the analytic cost profile and (with torch) measured profiles.

Importing this package does not import torch; only ``profiler.models`` (meta-device model
building) and ``profiler.measure`` do, so the pure solvers in ``partitioner`` can use the Profile
types without pulling torch in.
"""
