"""Installs ``dicom_gateway_autoload.pth`` at the root of site-packages.

Everything else is declared in pyproject.toml.  The .pth file makes our
pydicom plugins available to every program (see ``gateway/_autoload.py``).
Regular wheels get it through ``build_lib``; editable installs through the
directory the editable wheel is assembled from (its purelib root), which
``editable_wheel`` gives ``install.install_lib`` while ``build_py`` runs.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "dicom_gateway_autoload.pth"
HERE = Path(__file__).resolve().parent


class build_py_with_pth(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        self.copy_file(str(HERE / PTH), str(Path(target, PTH)), preserve_mode=False)

    def get_outputs(self, *args, **kwargs) -> list[str]:
        outputs = list(super().get_outputs(*args, **kwargs))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib, PTH)))
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
