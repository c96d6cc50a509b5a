"""Packaging for mmloss.

The core needs only torch and mmengine. MMDetection (with mmcv) is an extra:
it is needed to train with the configs and to run the parity tests.
"""
import os.path as osp
import re

from setuptools import find_packages, setup


def read_version():
    with open(osp.join(osp.dirname(__file__), 'mmloss', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


setup(
    name='mmloss',
    version=read_version(),
    description='Object-detection losses for MMDetection configs: exact '
    'twins of mmdet losses, faster, NaN-safe, plus newer IoU-family losses',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmloss', 'mmloss.*']),
    python_requires='>=3.8',
    install_requires=['torch>=1.13', 'mmengine>=0.10,<1.0'],
    extras_require={
        # mmcv has no wheel for every torch: install it by the usual route
        # (`mim install mmcv` or a source build) before this extra.
        # mmengine 0.10 finds mmdet's configs through pkg_resources (every
        # `mmdet::` base), which setuptools deprecates (its warning: pin
        # <81) and newer releases no longer ship.
        'mmdet': ['mmcv>=2.0.0rc4,<2.2.0', 'mmdet>=3.0,<3.4',
                  'setuptools<81'],
        'tests': ['pytest>=7', 'hypothesis>=6'],
        'viz': ['matplotlib>=3.5'],
    },
    license='Apache-2.0',
    zip_safe=False,
)
