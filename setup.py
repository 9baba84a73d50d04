"""Build script: the Cython extensions are compiled by every normal install (pip install .)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("balsam.core._copyfmt", ["balsam/core/_copyfmt.pyx"]),
    Extension("balsam.service.packing._packer", ["balsam/service/packing/_packer.pyx"]),
]

setup(ext_modules=cythonize(extensions, language_level=3, quiet=True))
