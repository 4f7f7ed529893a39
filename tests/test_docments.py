"""Every public function documents every parameter (fastcore docments: a trailing `# comment` per parameter) and has a
docstring, so `show_doc` and the docs site show what each argument means. The modules listed are checked; the list grows
as modules are brought up to this standard."""
import importlib
import inspect

import pytest
from fastcore.docments import docments

MODULES = ['core', 'metrics', 'capture', 'tasks', 'models', 'baseline', 'patching', 'path_patching', 'attribution', 'rescue',
           'store', 'features', 'circuits', 'extract', 'engine', 'probes', 'probe_selection', 'ternary', 'cli',
           'saes', 'sae_eval', 'dashboards', 'study']


def public_functions(mod):
    "The functions a module exports (`__all__`, no leading underscore) that it defines itself (not re-exports or partials)."
    for name in getattr(mod, '__all__', []):
        obj = getattr(mod, name)
        if not name.startswith('_') and inspect.isfunction(obj) and obj.__module__ == mod.__name__: yield name, obj


def undocumented(fn) -> list[str]:
    "Parameters of `fn` (not *args, **kwargs or self) without a docment; '<docstring>' when the docstring is missing."
    docs = docments(fn, full=False)
    params = inspect.signature(fn).parameters.values()
    missing = [p.name for p in params
               if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != 'self' and not (docs.get(p.name) or '').strip()]
    return missing + ([] if (fn.__doc__ or '').strip() else ['<docstring>'])


@pytest.mark.parametrize('module', MODULES)
def test_every_public_function_has_docments(module):
    mod = importlib.import_module(f'actlab.{module}')
    fns = dict(public_functions(mod))
    assert fns, f"actlab.{module} exports no functions: is __all__ right?"
    missing = {name: m for name, fn in fns.items() if (m := undocumented(fn))}
    assert not missing, f"actlab.{module}: parameters without a docment (add a trailing `# comment`): " + \
        '; '.join(f"{n}({', '.join(m)})" for n, m in missing.items())


def _bare(a, b=1):
    return a


def _half(a,  # documented
          b=1):
    "Half documented."
    return a


def _full(a,  # the first
          *args,
          b: int = 1,  # keyword-only, documented
          **kw):
    "Fully documented; *args and **kw need no docment."
    return a


def test_the_check_finds_what_is_missing():
    assert undocumented(_bare) == ['a', 'b', '<docstring>']
    assert undocumented(_half) == ['b']
    assert undocumented(_full) == []
