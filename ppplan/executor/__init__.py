"""Runtime executor: run a Plan's stage cut with torch.distributed, check it, measure it.

``ppplan run PLAN`` launches one process per pipeline rank through torch's elastic launcher
(``torchrun`` semantics), each rank materialises only its stage's modules (the plan's module
names are the contract), runs prefill + greedy decode with micro-batches in flight, and rank 0
writes the measurements. The launching process then checks the tokens and logits against the
unsplit model run in one process. See ``docs/executor.md``.
"""

from ppplan.executor.spec import ExecutorError, RunSpec

__all__ = ["ExecutorError", "RunSpec"]
