"""README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_library_example_runs_as_written() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - the project's own text

    widths = [m.out_channels for m in scope["model"] if isinstance(m, nn.Conv2d)]
    assert widths == [13, 26]  # what the comment in the example says
    assert scope["result"].n_removed == 16 + 32 - sum(widths)
