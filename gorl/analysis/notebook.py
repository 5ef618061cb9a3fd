"""Execute an analysis notebook on a run without Jupyter's UI: ``python -m gorl.analysis``.

The notebooks take their inputs from environment variables (``GORL_RUN_DIR``, ``GORL_RUN_DIRS``,
``GORL_FIGURE``), so the same file runs interactively, here, and in the test suite.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def execute_notebook(path: str | Path, env: dict[str, str] | None = None, output: str | Path | None = None, timeout: int = 600):
    """Run every cell of ``path`` in a fresh ``python3`` kernel with ``env`` added to its
    environment; return the executed notebook (also written to ``output`` if given).

    The kernel's working directory is the notebook's folder, as in Jupyter.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})  # the kernel subprocess inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if output is not None:
        nbformat.write(nb, output)
    return nb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gorl.analysis", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", help="e.g. notebooks/distributions.ipynb")
    parser.add_argument("runs", nargs="+", help="run directories (one for distributions.ipynb, several for learning_curves.ipynb)")
    parser.add_argument("--figure", help="also save the notebook's main figure here (PNG)")
    parser.add_argument("--output", help="write the executed notebook here")
    args = parser.parse_args(argv)
    runs = [str(Path(r).resolve()) for r in args.runs]
    env = {"GORL_RUN_DIR": runs[0], "GORL_RUN_DIRS": os.pathsep.join(runs)}
    if args.figure:
        env["GORL_FIGURE"] = str(Path(args.figure).resolve())
    execute_notebook(args.notebook, env, args.output)
    print(f"executed {args.notebook}" + (f"; figure -> {args.figure}" if args.figure else ""))
