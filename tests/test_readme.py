"""The README's notebook snippet runs as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_snippet_runs():
  text = open(os.path.join(ROOT, "README.md")).read()
  snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  scope = {}
  exec(compile(snippet, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert scope["grad_syn"].shape == (40, 2048)
  assert scope["amplitude"].shape == (4096,)
  assert 0.0 < float(scope["value"]) < 2.0
