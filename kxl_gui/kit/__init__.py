"""Small building blocks every tab uses, so each tab only lays them out and binds them to its form state.

- `card.Card`: a titled section (title, subtitle, body, inline message);
- `path_row.PathRow`: a path field with a Browse button (file to open, file to save, or folder);
- `inline_message.InlineMessage`: an info / warning / error line shown where the problem is;
- `latest_request.LatestRequest`: a background request where only the newest one's answer counts;
- `job_progress.JobProgress`: progress bar + status line + Cancel, bound to a running `Job`;
- `form_binding.FormBinding`: widgets <-> fields of a plain form-state object, both ways, without guard flags;
- `palette`: one colour table keyed by caption tag kind (plain Python).
"""
