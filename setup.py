"""Package list for setuptools (metadata lives in pyproject.toml).

resources/ sits beside the packages in the source tree (DESIGN.md); installed, it becomes the `kxl_resources`
package, which `trainer_core.paths.resources_dir()` finds. pyproject's `packages.find` cannot express that
rename, hence this file.

`trainer_core.dataset._tar_walk` is C (a reference build's header walk: ~0.35 us per tar member against
~1.6 us for the numpy walk, see its source). It is optional: where no C compiler or Python headers are found the install goes on without it and
tar_headers.py walks with numpy, giving the same answers.
"""

from setuptools import Extension, find_packages, setup

setup(
    packages=[*find_packages(include=["trainer_core*", "kxl_gui*"]), "kxl_resources"],
    package_dir={"kxl_resources": "resources"},
    ext_modules=[
        Extension("trainer_core.dataset._tar_walk", ["trainer_core/dataset/_tar_walk.c"], optional=True),
    ],
    package_data={
        "kxl_resources": [
            "**/*.json",
            "**/*.txt",
            "**/*.toml",
            "**/*.qss",
            "**/*.png",
            "**/*.svg",
            "**/*.csv",
            "**/*.xz",  # the packed Danbooru tag list
            "**/*.safetensors",  # the demo model's weights
        ],
        "kxl_gui": ["**/*.qss", "**/*.svg", "**/*.png"],
    },
)
