"""`python -m cxrtool.cli` == `cxrtool`."""

from cxrtool.cli.main import app

app()
