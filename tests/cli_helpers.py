"""Running a package command line's main() in-process, as the tests of both do."""

import sys

import pytest


def run_main(monkeypatch, capsys, prog, main, *args):
    """Calls `main()` with sys.argv = [prog, *args]; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [prog, *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
