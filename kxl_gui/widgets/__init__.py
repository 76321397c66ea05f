"""Reusable widgets shared by the tabs (one module per widget family, named after the tab that owns it)."""
