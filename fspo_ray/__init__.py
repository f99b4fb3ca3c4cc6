"""fspo-ray: few-shot preference optimization (FSPO) on Ray.

Importing the package is cheap and needs neither Ray, vLLM nor a GPU: submodules import
their heavy dependencies where they are used.
"""

__version__ = "0.1.0"
