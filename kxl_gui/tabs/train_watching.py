"""The Train tab's run-watching half: follow a run through a `RunMonitor` (the engine supervisor's Qt adapter),
redraw the live view in small slots, keep Stop / Resume / Sample now / Save now in step with the run, and the
actions on runs (stop, kill, mark stopped, close with a live run). A mixin of `TrainTab` (train.py), which owns
the widgets it uses; split out so each file holds one half of the tab."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from trainer_core.train.runs import checkpoint_states, mark_run, saved_lokrs
from trainer_core.train.supervisor import Supervisor

from ..widgets.train_run_monitor import RunMonitor
from .train_live_card import figures_text

REDRAW_SLOTS = ("loss", "lr", "grad", "status")  # the three plots (TrainPlots.PLOTS), then figures and lists
CATCH_UP_REDRAW_S = 0.6
RESUMABLE = ("stopped", "failed")  # a finished run has nothing left to do; a live one is still doing it

_gc_frozen = False


def freeze_long_lived_objects() -> None:
    """Move every object alive now (modules, Qt wrappers, the built widgets: ~80k) out of the garbage collector's
    generations, once per process, when a run is first watched.

    Streaming events allocates dicts quickly, which triggers collections; a full one walked all of those objects
    and paused the GUI thread 25-65 ms (measured). Frozen objects are still freed by reference counting; only a
    reference cycle among them that dies later is kept, a small price for a window that lives for days.
    """
    global _gc_frozen
    if not _gc_frozen:
        _gc_frozen = True
        gc.freeze()


class RunWatching:
    """Watching and acting on runs; expects the TrainTab attributes it names (monitor, plots, live_card, ...)."""

    # ================================================================================================ watching
    def _watch(self, supervisor: Supervisor, show_settings: bool = True) -> RunMonitor:
        """Follow the supervisor's run (its events, its log); with `show_settings` the form shows its config.toml."""
        freeze_long_lived_objects()
        if self.monitor is not None:
            self.monitor.detach()
            self.monitor.deleteLater()
        run_dir = supervisor.run_dir
        monitor = RunMonitor(supervisor, parent=self)
        monitor.state_changed.connect(self._set_live_state)
        monitor.ended.connect(self._on_run_ended)
        self.monitor = monitor
        self._drawn = {"samples": -1, "saves": -1}
        self._slot_drawn.clear()
        self.gallery.clear()
        self.log_view.follow(run_dir)
        if show_settings:
            self.show_run_settings(run_dir)
        else:
            self._settings_run = run_dir  # launched from the form: the form is what config.toml holds
        settings = self.form.settings
        self.gallery.set_empty_hint(
            int(settings["training.sample_every"]), bool(settings["training.sample_prompts"])
        )
        self.plots.set_series(monitor.series)
        self.live_card.show_run(run_dir)
        self._set_live_state(monitor.state, monitor.detail)
        self._refresh_checkpoints()
        self.monitor_changed.emit(monitor)
        return monitor

    def attach(self, run_dir: Path) -> RunMonitor | None:
        """Watch (or inspect) a run from the runs list; a live one is followed until it ends."""
        if self.monitor is not None and self.monitor.run_dir == Path(run_dir):
            return self.monitor
        if self.monitor is not None and self.monitor.owns_process:
            self._show_launch_error(
                "This window launched the current run; it keeps watching it until it ends."
            )
            return None
        monitor = self._watch(Supervisor.follow(run_dir, stop_grace_s=self.stop_grace_s,
                                                term_grace_s=self.term_grace_s))  # fmt: skip
        self.live_tabs.setCurrentIndex(0)
        return monitor

    def _on_runs_listed(self, runs: list) -> None:
        if self.monitor is not None:
            return
        live = [r for r in runs if r.state in ("running", "launching")]
        if live:
            self.attach(live[0].run_dir)  # reattach to what was left running (newest first)

    def _set_live_state(self, state: str, detail: str) -> None:
        m = self.monitor
        self.live_card.show_state(state, detail, m.log_tail if m is not None else [])
        if m is not None:
            self.figures.setText(figures_text(m.series, self.plots.smoothing, m.active))
        self._sync_buttons()

    def _on_run_ended(self, state: str) -> None:
        self._refresh_checkpoints()
        self.runs.refresh()
        self.run_ended.emit(state)
        self.context.show_status(f"Training {state}: {self.monitor.run_dir.name if self.monitor else ''}")

    def _on_redraw_tick(self) -> None:
        """One slot of the live view per tick, round robin. A slot is one plot, or the figures + lists; each is a
        separate paint, so a tick stays short while every slot is still redrawn ~6 times a second (REDRAW_MS x
        len(REDRAW_SLOTS)). Plots are skipped while the tab is not on screen (they catch up when it is)."""
        m = self.monitor
        if m is None:
            return
        version = m.series.version
        now = time.monotonic()
        visible = self.isVisible()
        for _ in range(len(REDRAW_SLOTS)):
            slot = REDRAW_SLOTS[self._next_slot]
            self._next_slot = (self._next_slot + 1) % len(REDRAW_SLOTS)
            if self._slot_drawn.get(slot) == version or (not visible and slot != "status"):
                continue
            if m.far_behind and now - self._slot_time.get(slot, 0.0) < CATCH_UP_REDRAW_S:
                continue  # reading a long backlog (reattach): intermediate states are not worth a repaint each
            self._slot_time[slot] = now
            self._refresh_live(slot)
            return

    def _refresh_live(self, slot: str | None = None) -> None:
        """Redraw what changed: one of REDRAW_SLOTS, or all of them (None)."""
        m = self.monitor
        if m is None:
            return
        s = m.series
        if self.plots.series is not s:  # the events file was replaced: the monitor started a new series
            self.plots.set_series(s)
            self._drawn = {"samples": -1, "saves": -1}
            self._slot_drawn.clear()
        for name in REDRAW_SLOTS if slot is None else (slot,):
            if self._slot_drawn.get(name) == s.version:
                continue
            self._slot_drawn[name] = s.version
            if name == "status":
                self._refresh_status(m)
            else:
                self.plots.refresh(name)

    def _refresh_status(self, m: RunMonitor) -> None:
        s = m.series
        self.live_card.show_progress(s, figures_text(s, self.plots.smoothing, m.active))
        if len(s.samples) != self._drawn["samples"]:
            self._drawn["samples"] = len(s.samples)
            self.gallery.set_samples(s.samples)
        saves = sum(1 for mk in s.markers if mk.kind == "save")
        if saves != self._drawn["saves"]:
            self._drawn["saves"] = saves
            self._refresh_checkpoints()

    def _refresh_checkpoints(self) -> None:
        if self.monitor is None:
            self.checkpoints.show_files([], [])
        else:
            self.checkpoints.show_files(
                checkpoint_states(self.monitor.run_dir), saved_lokrs(self.monitor.run_dir)
            )
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        m = self.monitor
        active = m is not None and m.active
        preflight_ok = self.report is not None and self.report.ok
        self.launch_button.setEnabled(not active and preflight_ok)
        self.stop_button.setEnabled(active and m.state != "stopping")
        self.sample_button.setEnabled(active and m.handshake)
        self.save_now_button.setEnabled(active and m.handshake)
        resumable = m is not None and not active and m.state in RESUMABLE and self.states_list.count() > 0
        self.resume_button.setEnabled(resumable)
        self.resume_button.setToolTip(self._resume_tip(resumable))
        self.open_generate_button.setEnabled(self.checkpoints.selected_lokr() is not None)
        self.checkpoints.compare_button.setEnabled(m is not None and self.lokr_list.count() > 0)
        self._lock_form(active)

    def _resume_tip(self, resumable: bool) -> str:
        m = self.monitor
        if resumable:
            return f"Continue this run from its saved state ({self.checkpoints.selected_state_text()}; pick " \
                   "another in Checkpoints)"  # fmt: skip
        if m is None:
            return "Resume a stopped or failed run: open it from the Runs list first"
        if m.active:
            return "The run is still going: stop it first"
        if m.state == "finished":
            return "The run finished: there is nothing left to resume"
        return "This run has no saved training state to resume from"

    # ================================================================================================ actions
    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def _command(self, name: str) -> None:
        if self.monitor is not None and self.monitor.active:
            self.monitor.request(name)
            self.context.show_status(f"{name.capitalize()} requested: served after the current step")

    def open_in_generate(self, path: Path) -> None:
        self.context.request("generate.add_lokr", Path(path), switch_to="Generate")

    def compare_states(self) -> None:
        """Open Generate with an X/Y/Z grid over the watched run's saved LoKrs ("Compare states")."""
        if self.monitor is not None:
            self.context.request("generate.compare_run", self.monitor.run_dir, switch_to="Generate")

    def _mark_stopped(self, run_dir: Path) -> None:
        mark_run(run_dir, "stopped", message="marked stopped by the user")
        self.runs.refresh()

    def _kill_run(self, run_dir: Path) -> None:
        if self.monitor is not None and self.monitor.run_dir == run_dir:
            self.monitor.kill()
        else:
            note = Supervisor.follow(run_dir).kill()
            self.context.show_status(note)
        self.runs.refresh()

    def confirm_close(self) -> bool:
        """Asked by the main window before it closes: a live run is stopped or left running, or closing is cancelled."""
        m = self.monitor
        if m is None or not m.active:
            return True
        choice = self.close_choice(self, m.run_dir.name)
        if choice == "cancel":
            return False
        if choice == "stop":
            m.stop()
        m.detach()  # a stop is on its way (stop file / signal); the trainer finishes without us
        return True
