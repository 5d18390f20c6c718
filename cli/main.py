"""The ``hashindex`` command line: a thin shell over the public Python API (``import hashindex``).

Each command parses its options, calls one function of the API, and reports; library errors
become one line on stderr and an exit code (2 bad usage or input, 3 a damaged or modified file,
1 other failures), with settings named as this command's flags.
"""

from __future__ import annotations

import logging
import re
import sys

import click

from hashindex.cli import dedup, finetune, live, project, scale, search, stages
from hashindex.core.errors import HashIndexError
from hashindex.core.version import __version__


def _flag(ctx: click.Context, setting: str) -> str | None:
    """The flag of the invoked command whose parameter is ``setting`` (``image_size`` -> ``--image-size``)."""
    name = ctx.invoked_subcommand
    command = ctx.command.get_command(ctx, name) if name else None
    for p in getattr(command, "params", ()):
        if p.name == setting and isinstance(p, click.Option):
            return max(p.opts, key=len)
    return None


class _Group(click.Group):
    """Turns library errors into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HashIndexError as e:
            msg = str(e)
            flag = _flag(ctx, e.setting) if e.setting else None
            if flag:
                msg = re.sub(rf"(?<![\w-]){re.escape(e.setting)}(?!\w)", flag, msg, count=1)
            click.echo(f"error: {msg}", err=True)
            sys.exit(e.exit_code)
        except FileNotFoundError as e:
            click.echo(f"error: {e.filename or e}: no such file or directory", err=True)
            sys.exit(2)
        except OSError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hashindex")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and warnings about your data; no progress bars.")
@click.pass_context
def cli(ctx, verbose: int, quiet: bool):
    """Image retrieval with learned binary codes.

    \b
    Your own images, in one command (embed, fit, build; then a search page):
      hashindex index photos/ out/ --serve
    \b
    The stages one by one:
      hashindex embed SOURCE db.h5 --views 2      frozen timm backbone -> HDF5 embeddings
      hashindex fit-probe db.h5 probe/ --bits 64  CroVCA hash probe (or a baseline)
      hashindex finetune SOURCE tuned/            or: LoRA adapters + probe trained on images
      hashindex build db.h5 probe/ index/         binary index (kind chosen by measurement) + manifest
      hashindex query index/ photo.jpg -k 10      images (or embeddings) in, ranked items out
      hashindex evaluate index/ q.h5              mAP@k against float cosine
      hashindex add index/ new_photos/            live index: add, remove, compact, info
      hashindex dedup index/                      groups of near-duplicate items
      hashindex serve index/                      HTTP API and web page on 127.0.0.1:8000
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    # -q hides chatter (progress bars, "wrote" lines, other libraries' warnings), never a
    # warning of hashindex's about the user's data.
    logging.basicConfig(
        level=logging.ERROR if quiet else level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("hashindex").setLevel(logging.WARNING if quiet else level)
    if quiet:
        import warnings

        warnings.simplefilter("ignore")
    ctx.obj = {"progress": not quiet, "quiet": quiet}


for _command in (
    *stages.COMMANDS,
    scale.import_cmd,
    finetune.finetune,
    *search.COMMANDS,
    *live.COMMANDS,
    dedup.dedup,
    project.index,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="hashindex")


if __name__ == "__main__":
    main()
