"""ppplan: stage-partition optimizer for pipeline-parallel LLM inference.

Layers, bottom up (each imports only those below it; checked by import-linter in CI):
``ppplan.core`` → ``ppplan.partitioner`` → ``ppplan.profiler`` → ``ppplan.executor`` → ``ppplan.api``
→ ``ppplan.migrations``. See ``docs/design.md``.
"""
