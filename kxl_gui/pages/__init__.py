"""Pages shown as tabs of the main window. Each takes the shared `AppContext` and registers itself once."""
