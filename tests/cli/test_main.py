"""The command line as a whole: the command registry, one-line errors, help texts, entry points."""

import importlib
import subprocess
import sys

import pytest

from lipden.cli import COMMANDS, build_parser, subcommands
from tests.cli.helpers import run_cli
from tests.helpers import ROOT


def test_bad_arguments_give_one_line_errors():
    for args in (["certify", "--size", "0"], ["certify", "--size", "3", "4", "5"]):
        result = run_cli(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    result = run_cli("certify", "--activation", "swish")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_help_lists_commands_and_examples():
    result = run_cli("certify", "--help")
    assert result.returncode == 0 and "examples:" in result.stdout


def test_every_command_has_help_with_examples():
    for name, parser in subcommands(build_parser()).items():
        text = parser.format_help()
        assert "examples:" in text, name
        undocumented = [a.dest for a in parser._actions if not a.help and a.dest != "help"]
        assert not undocumented, (name, undocumented)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_module_adds_its_parser_and_runs(name):
    module = importlib.import_module(COMMANDS[name])
    assert callable(module.add_parser) and callable(module.run)
    assert module.__doc__ and module.run.__doc__
    assert list(subcommands(build_parser([name]))) == [name]


def test_a_command_imports_only_its_own_module():
    code = ("import sys\nfrom lipden.cli import COMMANDS, main\n"
            "assert main(['certify', '--size', '0']) == 2\n"
            "print(sorted(m for m in COMMANDS.values() if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['lipden.cli.certify']"


def test_unknown_commands_list_every_command():
    result = run_cli("ct")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "lipden: error: argument command: invalid choice: 'ct' (choose from 'denoise', 'certify', 'train', "
        "'publish', 'reconstruct', 'tune', 'benchmark') (see lipden --help)")


def test_python_dash_m_lipden_is_the_same_program():
    done = subprocess.run([sys.executable, "-m", "lipden", "certify", "--size", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "lipden certify: error: --size takes one or two positive integers"


def test_activation_choices_are_the_activations():
    from lipden.cli._common import ACTIVATION_CHOICES, SPLINE_INIT_CHOICES
    from lipden.nn.activations import ACTIVATIONS
    from lipden.nn.splines import SPLINE_INITS

    assert ACTIVATION_CHOICES == list(ACTIVATIONS)
    assert SPLINE_INIT_CHOICES == list(SPLINE_INITS)
