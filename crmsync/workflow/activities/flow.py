"""Flow activities: wait, and the Python script hook."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

from crmsync.workflow.engine import ActivityError, Outputs, Progress, RunContext, Row
from crmsync.workflow.model import ScriptActivity, WaitActivity


def wait(activity: WaitActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    """Hold the rows for `seconds` (the seed's Wait before a retry); a stop request ends the wait early."""
    if ctx.stop.wait(activity.seconds):
        raise ActivityError("stopped while waiting", "STOPPED")
    return Outputs(ok=list(rows), note=f"waited {activity.seconds:g}s")


def script(activity: ScriptActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    """Call `function(rows, ctx)`; it returns the rows to hand on (None: the same rows). `ctx.vars` holds the
    workflow variables (crmStartImport, crmEndDate…), `ctx.conn` a Campaign connection."""
    function = load_function(activity, ctx.file)
    returned = function(rows, ctx)
    out = rows if returned is None else returned
    if not isinstance(out, list) or not all(isinstance(r, dict) for r in out):
        raise ActivityError(f"{activity.function} must return a list of dict rows or None, got "
                            f"{type(out).__name__}", "SCRIPT_RESULT")
    return Outputs(ok=out, note=f"{activity.function}: {len(out)} row(s)")


def load_function(activity: ScriptActivity, workflow_file: Path | None) -> Callable[..., Any]:
    """`module:function` from the import path, or `function` from `file:` (relative to the workflow file)."""
    if activity.file:
        path = Path(activity.file)
        if not path.is_absolute() and workflow_file is not None:
            path = workflow_file.parent / path
        if not path.exists():
            raise ActivityError(f"script file {path} does not exist", "SCRIPT_NOT_FOUND")
        spec = importlib.util.spec_from_file_location(f"crmsync_workflow_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        name = activity.function
    else:
        module_name, _, name = activity.function.partition(":")
        if not name:
            raise ActivityError(f"function {activity.function!r}: write module:function, or give file:",
                                "SCRIPT_NOT_FOUND")
        module = importlib.import_module(module_name)
    function = getattr(module, name, None)
    if not callable(function):
        raise ActivityError(f"no function {name!r} in {getattr(module, '__file__', module)}", "SCRIPT_NOT_FOUND")
    return function
