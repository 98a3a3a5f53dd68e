"""The `dna-deploy` command. Project errors become one line and exit code 1 (--debug: traceback).

Three kinds of failure reach the user:
- a DnaDeployError (bad input the library recognised): `error: ...`, exit 1 (a deployed network
  that clearly misses its latency budget, errors.BudgetMissed: exit 3);
- an operating-system error on a file (a read-only folder, an output path that is a file, a full
  disk): `error: cannot write ...: <reason>`, exit 1;
- a usage error (unknown flag, wrong type): `error: ... (see 'dna-deploy CMD --help')`, exit 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from dna_deploy import __version__
from dna_deploy.errors import DnaDeployError

_state = {"debug": False}


def _os_error_line(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"cannot use{where}: {e.strerror or e}; check that the path is a writable folder (or file) and the disk has room"


class _ErrorBoundary(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DnaDeployError as e:
            if _state["debug"]:
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError, FileNotFoundError) as e:
            if _state["debug"]:
                raise
            typer.echo(f"error: {_os_error_line(e)}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:
            if _state["debug"] or e.errno is None:
                raise
            typer.echo(f"error: {_os_error_line(e)}", err=True)
            raise typer.Exit(1) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Usage errors as one line (exit 2) instead of a framed box; the rest as click does it."""
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's ClickException family, as Typer vendors it
            if not standalone_mode:
                raise
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare group: its help is the answer
                e.show()
            else:
                ctx = getattr(e, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                typer.echo(f"error: {e.format_message()}{hint}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=_ErrorBoundary, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hardware-aware DNA neural architecture search: profile -> train -> rate -> search -> export -> verify.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dna-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    _state["debug"] = debug


def _register() -> None:
    from dna_deploy.cli import deploy, devices, doctor, profile, run, search, space, train

    app.add_typer(space.app, name="space")
    app.add_typer(devices.app, name="devices")
    app.add_typer(profile.app, name="profile")
    app.add_typer(train.teacher_app, name="teacher")
    app.command("train")(train.train)
    app.command("rate")(search.rate)
    app.command("search")(search.search)
    app.command("retrain")(deploy.retrain)
    app.command("export")(deploy.export)
    app.command("verify")(deploy.verify)
    app.command("run")(run.run)
    app.command("quickstart")(run.quickstart)
    app.command("doctor")(doctor.doctor)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
