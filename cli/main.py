"""The ``frametrans`` command. Commands parse and validate, then call the library.

Nothing heavy is imported here: torch and friends load inside the commands, so ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import errno
import importlib
import signal
import sys
import traceback
from typing import Any, Dict, Optional

import click

from frametrans import __version__
from frametrans.heap import keep_freed_memory

# command name -> "module:attribute" under frametrans.cli, imported only when the command runs.
_COMMANDS: Dict[str, str] = {
    "apply": "apply:apply_cmd",
    "join": "join_cmd:join_cmd",
    "predict-next": "predict:predict_next_cmd",
    "train": "train_cmd:train_group",
    "convert": "models_cmd:convert_cmd",
    "inspect": "models_cmd:inspect_cmd",
    "models": "models_cmd:models_cmd",
    "bench": "bench:bench_group",
    "eval": "eval_cmd:eval_group",
    "export": "export_cmd:export_cmd",
}

_HELP: Dict[str, str] = {
    "apply": "Run images, folders, videos or raw streams through a generator.",
    "join": "Make a playable video of what an interrupted job finished (NAME.partial/).",
    "predict-next": "Predict the next frames of a clip with a multi-frame U-Net.",
    "train": "Train pix2pix, CycleGAN, MUNIT or the next-frame predictor.",
    "convert": "Convert a foreign checkpoint (pix2pix/CycleGAN .pth, MUNIT .pt) to .safetensors.",
    "inspect": "Show architecture, config, parameters and I/O contract of a checkpoint.",
    "models": "List the bundled models with their task, data, size and quality.",
    "bench": "Measure throughput: model-only, end to end, and a reference loop.",
    "eval": "Measure outputs: temporal consistency (flicker) of translated videos.",
    "export": "Export a generator to ONNX (dynamic batch and size, contract in the metadata).",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) delivered: unwinds exactly like Ctrl-C, so outputs are finalized the same
    way (finished files kept, a video closed as ``NAME.partial.EXT``); exit status 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: Any) -> None:
    # Only once: a second SIGTERM while cleaning up must not cut the cleanup short.
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Ctrl-C already raises KeyboardInterrupt; with this, ``kill``, ``timeout``, systemd, Slurm and
    closing the terminal take the same path. Signals that were ignored when we started (``nohup``)
    stay ignored. No-op outside the main thread (signal handlers can only be set there).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue
        signal.signal(signum, _raise_terminated)


def _interrupted_status(exc: BaseException) -> int:
    return 128 + exc.signum if isinstance(exc, Terminated) else 130


class UserError(click.ClickException):
    """A one-line error for the user: ``frametrans: error: MESSAGE`` on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"frametrans: error: {self.format_message()}", err=True)


class StdoutClosed(click.ClickException):
    """The program reading our stdout went away (``... -o - | head -c 1000``): exit status 141
    (128 + SIGPIPE), as the shell reports for tools killed by SIGPIPE, and nothing on stderr:
    a pipe's reader closing early is how pipelines end, not an error.

    A ClickException, because Click itself turns an EPIPE ``OSError`` into exit status 1."""

    exit_code = 141

    def __init__(self) -> None:
        super().__init__("broken pipe")

    def show(self, file: Any = None) -> None:
        _silence_stdout()


def _is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (
        isinstance(exc, OSError) and exc.errno == errno.EPIPE)


class LazyGroup(click.Group):
    """A group that imports each command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[name].split(":")
        module = importlib.import_module(f"frametrans.cli.{module_name}")
        return getattr(module, attr)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; library errors become one-line messages (tracebacks with --verbose)."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - shown as one line, the traceback on request
            if _is_broken_pipe(exc):
                raise StdoutClosed() from exc
            if (ctx.obj or {}).get("verbose"):
                raise
            hint = getattr(exc, "param_hint", None)  # a setting the run cannot work with: exit 2
            if hint:
                raise click.BadParameter(_one_line(exc), param_hint=hint) from exc
            raise UserError(_one_line(exc)) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP[name]) for name in _COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="frametrans")
@click.option("--verbose", "-v", is_flag=True,
              help="Show full tracebacks on errors, and debug lines (apply: time per frame by stage).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Push images, folders, videos and frame streams through image-to-image generators.

    \b
    Examples:
      frametrans apply clip.mp4 -o out.mp4 --model cyclegan
      frametrans apply photos/ -o painted/ --model cyclegan --recursive
      frametrans predict-next clip.mp4 -o next.mp4 --model predictor
      frametrans train cyclegan --data DIR -o runs/cg
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    keep_freed_memory()  # every frame's tensors reuse the pages of the last (frametrans.heap)


def main(argv: Optional[list[str]] = None) -> Any:
    """Entry point: run the group, turning library errors into one-line messages."""
    verbose = "--verbose" in (argv or sys.argv[1:]) or "-v" in (argv or sys.argv[1:])
    install_signal_handlers()
    if not verbose:
        _one_line_warnings()
    try:
        return cli.main(args=argv, prog_name="frametrans", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns KeyboardInterrupt into Abort; the signal that caused it is the cause
        cause = exc if isinstance(exc, KeyboardInterrupt) else exc.__cause__
        if isinstance(cause, Terminated):
            click.echo(f"frametrans: stopped by {signal.Signals(cause.signum).name}", err=True)
        else:
            click.echo("frametrans: interrupted", err=True)
        sys.exit(_interrupted_status(cause) if cause is not None else 130)
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(141)
    except Exception as exc:  # library errors: one line, traceback only with --verbose
        if verbose:
            traceback.print_exc()
        click.echo(f"frametrans: error: {_one_line(exc)}", err=True)
        sys.exit(1)


def _one_line_warnings() -> None:
    """Python warnings from libraries (Pillow on a damaged TIFF tag, torch...) as one line each,
    ``frametrans: warning: MESSAGE``, instead of file:line plus source (--verbose keeps those)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        try:
            (file or sys.stderr).write(f"frametrans: warning: {text}\n")
        except (OSError, ValueError):
            pass

    warnings.showwarning = show


def _silence_stdout() -> None:
    """The reader of our stdout went away: point stdout at /dev/null so the interpreter's final
    flush does not print a second BrokenPipeError."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _one_line(exc: BaseException) -> str:
    from frametrans.io.errors import first_line

    return first_line(exc)


if __name__ == "__main__":
    main()
