"""The committed outputs are the docs (issue 13): a sample of quick, deterministic module notebooks is re-executed and
every code cell's text output compared with the one committed. A change of code that changes what a notebook shows
fails here until the notebook is re-executed (`jupyter nbconvert --to notebook --execute --inplace nbs/X.ipynb`, then
`nbdev_clean`)."""
import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# quick (seconds) and deterministic: no timings, temporary paths, machine names or dates in their outputs
SAMPLE = ['08_testing.ipynb', '13_heads.ipynb', '15b_policy.ipynb', '11_io.ipynb']


def text_outputs(cell: dict) -> list[str]:
    "What a reader sees of a code cell, as text: streams, plain-text results and errors (figures are left out)."
    out = []
    for o in cell.get('outputs', []):
        if o['output_type'] == 'stream': out.append(''.join(o['text']))
        elif o['output_type'] in ('execute_result', 'display_data') and 'text/plain' in o['data']:
            out.append(''.join(o['data']['text/plain']))
        elif o['output_type'] == 'error': out.append(f"{o['ename']}: {o['evalue']}")
    return out


@pytest.mark.parametrize('name', SAMPLE)
def test_committed_outputs_are_what_the_code_shows_now(name, monkeypatch):
    nbformat = pytest.importorskip('nbformat')
    from nbconvert.preprocessors import ExecutePreprocessor
    committed = nbformat.read(ROOT / 'nbs' / name, as_version=4)
    fresh = copy.deepcopy(committed)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the kernel inherits it: one thread, as the notebooks were run
    ExecutePreprocessor(timeout=300, kernel_name='python3').preprocess(fresh, {'metadata': {'path': str(ROOT / 'nbs')}})
    shown = lambda nb: [(c['source'], text_outputs(c)) for c in nb.cells if c['cell_type'] == 'code']
    assert any(out for _, out in shown(committed)), f'{name} has no committed outputs'
    for (source, old), (_, new) in zip(shown(committed), shown(fresh)):
        assert old == new, f'{name}: the committed output of\n{source}\nis not what it shows now: re-execute it'
