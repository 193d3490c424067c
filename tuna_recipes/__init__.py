"""tuna_recipes: the jobs that chain tuna's library and the evaluation package: the ``tuna`` command, the pipeline
(SFT -> Tuna_p -> Tuna, evaluation, tables), sweeps, the demo and the paper reproduction.

It is the top of the import graph: it may import ``tuna`` and ``evaluation``; neither imports it.
"""
