"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    namespace: dict = {}
    for block in blocks:  # every Python example, in order
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    res = namespace["result"]
    assert res["f760_mean"].dims == ("y", "x") and res["f760_mean"].attrs["units"]
    assert float(res["f760_sd"].min()) > 0
    assert namespace["L"].shape == (namespace["model"].n_bands,)
    assert float(namespace["L"].min()) > 0
    assert namespace["scene"].sizes["band"] == namespace["model"].n_bands


def test_readme_states_exactly_two_setup_commands():
    text = README.read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"```bash\n", section)) == 2
