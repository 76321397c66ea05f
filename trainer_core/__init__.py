"""Kohaku XL Workbench engine.

Everything the CLI, the GUI and the trainer share lives here. This package never imports Qt: the trainer runs on
headless boxes and in `accelerate` subprocesses where no GUI toolkit is installed.
"""

__version__ = "0.1.0"
APP_NAME = "Kohaku XL Workbench"
