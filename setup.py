"""Package metadata from settings.ini (nbdev 2 layout).

nbdev's template setup.py imports ``pkg_resources``, which current setuptools no longer ships;
this one reads settings.ini with configparser only.
"""
from configparser import ConfigParser
import shlex
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def _reqs(key: str) -> list[str]:
    return shlex.split(cfg.get(key, ''))

entry_points = {'console_scripts': [s for s in cfg.get('console_scripts', '').split() if s]}

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license='Apache-2.0',
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['actlab', 'actlab.*']),
    include_package_data=True,
    python_requires='>=' + cfg['min_python'],
    install_requires=_reqs('requirements'),
    extras_require={'dev': _reqs('dev_requirements'), 'ray': _reqs('ray_requirements')},
    entry_points=entry_points,
    zip_safe=False,
)
