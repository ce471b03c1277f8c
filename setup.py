"""
Metadata lives in setup.cfg; this file only adds the optional C extension.

``fws._speedups`` (fws/_speedups.c) is the compiled framing of fws's fast
paths. ``optional=True``: where no compiler or Python headers are installed,
``pip install`` warns and fws runs on the Python versions in fws/_wire/framing.py.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fws._speedups",
            sources=["fws/_speedups.c"],
            optional=True,
        )
    ]
)
