"""The Train tab's own style sheet: settings groups, the command box, the run-state badge, pre-flight lines."""

LOCAL_STYLE = """
QFrame#settingsGroup { background: #212328; border: 1px solid #30343a; border-radius: 8px; }
QLabel#groupTitle { color: #d8b66f; font-weight: 600; }
QPushButton#browseButton { padding: 4px 2px; }
QLineEdit, QComboBox, QSpinBox, QPlainTextEdit {
    background: #1d1f23; border: 1px solid #41454d; border-radius: 5px; padding: 3px 6px;
}
QLineEdit:focus, QComboBox:focus, QSpinBox:focus, QPlainTextEdit:focus { border-color: #e0a33a; }
QPlainTextEdit#commandBox, QPlainTextEdit#logTail { font-family: monospace; font-size: 9pt; color: #d6d2c8; }
QLabel#runState { border-radius: 9px; padding: 2px 10px; font-weight: 600; background: #2f3238; }
QLabel#runState[state="running"], QLabel#runState[state="launching"] { color: #9cc97a; background: #243020; }
QLabel#runState[state="stopping"] { color: #f2c15e; background: #3b2f17; }
QLabel#runState[state="failed"] { color: #f2b59b; background: #3a2520; }
QLabel#runState[state="stopped"] { color: #7fb2e5; background: #1f2a36; }
QLabel#runState[state="finished"] { color: #e6e2da; }
QLabel#figures { font-family: monospace; color: #e6e2da; }
QLabel#preflightItem[level="ok"] { color: #b9d98a; }
QLabel#preflightItem[level="warning"] { color: #f2c15e; }
QLabel#preflightItem[level="error"] { color: #f2b59b; }
QLabel#sampleThumb { background: #1d1f23; border: 1px solid #30343a; border-radius: 4px; }
QCheckBox { background: transparent; spacing: 7px; }
QCheckBox::indicator { width: 14px; height: 14px; border: 1px solid #55595f; border-radius: 3px; background: #1d1f23; }
QCheckBox::indicator:checked { background: #e0a33a; border-color: #e0a33a; }
QListWidget { background: #1d1f23; border: 1px solid #30343a; border-radius: 5px; }
QListWidget::item:selected { background: #4a3b1c; color: #f4efe6; }
QTabWidget#liveTabs::pane { border: none; border-top: 1px solid #30343a; }
"""
