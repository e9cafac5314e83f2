"""Every ```python block of the README runs as written (in a scratch directory)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README has lost its python examples"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "readme-tiny").is_dir()


def test_readme_commands_name_real_subcommands():
    from cfisac.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    used = set(re.findall(r"cfisac ([a-z][a-z-]+)", README.read_text()))
    assert used and used <= commands, used - commands
