"""cxrtool: embedding and retrieval over chest X-ray archives.

The public Python API mirrors the CLI: each subcommand is a thin wrapper over one function here.
"""

from cxrtool.errors import CxrError

__version__ = "0.1.0"
__all__ = ["CxrError", "__version__"]
