"""Package list for setuptools (metadata lives in pyproject.toml).

resources/ sits beside the packages in the source tree (DESIGN.md); installed, it becomes the `kxl_resources`
package, which `trainer_core.paths.resources_dir()` finds. pyproject's `packages.find` cannot express that
rename, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["trainer_core*", "kxl_gui*"]), "kxl_resources"],
    package_dir={"kxl_resources": "resources"},
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
