"""The `dna-deploy` command. Project errors become one line and exit code 1 (--debug: traceback)."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from dna_deploy import __version__
from dna_deploy.errors import DnaDeployError

_state = {"debug": False}


class _ErrorBoundary(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DnaDeployError as e:
            if _state["debug"]:
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None


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
    from dna_deploy.cli import deploy, devices, profile, run, search, space, train

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


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
