"""`python -m cxrtool` == `cxrtool`."""

from cxrtool.cli.main import app

app()
