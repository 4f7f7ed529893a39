"""nbdev_docs (for users who have Quarto) first runs nbdev's own notebook processing, which executes every cell that
imports something. A cell mixing imports with other code then runs out of context and breaks the docs build: keep
imports in cells of their own (nbdev FAQ). This runs that processing on every notebook, as nbdev_docs would."""
import os
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parent.parent / 'nbs').glob('*.ipynb'))


@pytest.mark.parametrize('nb_path', NBS, ids=[p.stem for p in NBS])
def test_nbdev_doc_processing_runs(nb_path, monkeypatch):
    from execnb.nbio import read_nb
    from nbdev.processors import FilterDefaults
    monkeypatch.setenv('IN_TEST', '1')
    monkeypatch.setenv('ACTLAB_NO_TRAIN', '1')
    monkeypatch.chdir(nb_path.parent)
    nb = read_nb(nb_path)
    FilterDefaults()(nb)  # raises "Error in notebook: ... in cell N" when a cell fails out of context
    assert nb.cells
