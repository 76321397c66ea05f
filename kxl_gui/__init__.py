"""Kohaku XL Workbench desktop app (PySide6).

Views and Qt adapters only: every capability lives in `trainer_core`, and anything slow runs in a worker
thread (`kxl_gui.jobs`) so the window never freezes. Start it with `kxl-gui` or `python -m kxl_gui.app`.
"""
