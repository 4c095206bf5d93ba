"""fnsession's one C module: the gateway lane's scans (operator/fnsession/gateway/_lane.c).
Everything else about the package is in pyproject.toml. The module is optional: where no compiler
is at hand the install still succeeds and the lane applies the same rules through llhttp, slower."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fnsession.gateway._lane", ["operator/fnsession/gateway/_lane.c"],
                             optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"])])
