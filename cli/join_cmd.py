"""``frametrans join``: a playable video of what an interrupted job finished."""

from __future__ import annotations

from typing import Optional

import click


@click.command("join")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write it [default: NAME.partial.EXT beside the folder].")
def join_cmd(folder: str, output: Optional[str]) -> None:
    """Join the finished segments of an interrupted video job (the NAME.partial/ folder that
    `frametrans apply` keeps after Ctrl-C or a crash) into a playable NAME.partial.EXT.

    \b
    frametrans join out/clip.partial              # -> out/clip.partial.mp4
    frametrans apply clip.mp4 -o out/clip.mp4 --resume   # the folder still finishes the job
    """
    from frametrans.apply.resumable import join_partial

    try:
        written = join_partial(folder, output)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="FOLDER") from None
    for p in written:
        click.echo(str(p))
