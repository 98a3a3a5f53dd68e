"""The Typer app: thin wiring over the library (parse, call one function, render)."""
