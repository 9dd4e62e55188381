"""The command line (the only package that imports click): parse, build settings, call a service, render."""

from deployer.cli.main import main

__all__ = ["main"]
