"""Form state of the tabs as plain Python: what the user has entered, without any widget.

Each form is a dataclass with `to_engine()` (the engine request the inputs describe, or a KxlError naming the
input that is wrong) and `from_engine(...)` (a form showing an engine request or a preset). Tabs bind widgets
to the fields (kxl_gui.kit.form_binding) and keep no state of their own in widgets, so everything a form does
is tested with plain pytest. This package never imports Qt (tests/core/test_layering.py checks it).
"""
