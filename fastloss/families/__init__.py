"""Loss families: each module holds one family's kernels, drivers, references and inputs (see DEVELOPING.md).

``NAME.py`` is the CPU implementation, ``NAME_cuda.py`` its CUDA twin (imported only for GPU arrays).
"""
