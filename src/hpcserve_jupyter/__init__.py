"""hpcserve-jupyter: serve AI models on local GPUs, SLURM clusters and Tapis pods from Jupyter.

Importing the package is cheap; the facade lives in `hpcserve_jupyter.api`.
"""

__version__ = "0.1.0"
