"""The workflow file: YAML validated by pydantic, one model per activity type.

A workflow is a small graph: every activity names the activities its outputs go to (`then:`). A bad file is
reported as ``<file>: <key.path>: <what to fix>``, one line per problem (exit status 2), like crmsync.yaml.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crmsync.config import Conversion, CrmName, Label, SqlName, TableName, explain_validation_error, read_yaml_mapping
from crmsync import filters
from crmsync.values import shown

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
PATH_MAX = 4096  # characters of a file path


class WorkflowError(Exception):
    """A workflow file that cannot be used, phrased as file: key path: what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Then(_Strict):
    """Where each output goes: names of later activities. `then: next` is short for `then: {ok: [next]}`."""

    ok: list[str] = Field(default_factory=list)
    error: list[str] = Field(default_factory=list)
    reject: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, (str, list)):
            data = {"ok": data}
        if isinstance(data, dict):
            data = {k: [v] if isinstance(v, str) else v for k, v in data.items()}
        return data

    def targets(self) -> list[tuple[str, str]]:
        return [(out, name) for out in ("ok", "error", "reject") for name in getattr(self, out)]


class OrderBy(_Strict):
    field: str
    descending: bool = False

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"field": data} if isinstance(data, str) else data


def _file_path(value: str | None) -> str | None:
    if value is not None and ("\x00" in value or not value.strip() or len(value) > PATH_MAX):
        raise ValueError(f"{shown(value, 40)} is not a usable file path (1 to {PATH_MAX} characters, no NUL)")
    return value


class _Activity(_Strict):
    name: str
    label: Label | None = None
    then: Then = Field(default_factory=Then)

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"{shown(value, 40)}: activity names start with a letter and use letters, digits, - "
                             "and _ (at most 100)")
        return value


def _checked_filter(value: Any, key: str) -> Any:
    if value is not None:
        filters.parse(value, key)  # raises FilterError (a ValueError) naming the place inside the filter
    return value


class QueryActivity(_Activity):
    """Rows of a Campaign table, filtered (bound parameters only)."""

    type: Literal["query"]
    table: TableName
    columns: list[SqlName] | None = None
    where: Any = None
    order_by: list[OrderBy] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)

    _check_where = field_validator("where")(classmethod(lambda cls, v: _checked_filter(v, "where")))


class CrmField(_Strict):
    """A CRM field read by an import: `column` renames it in the rows, `conversion` as in the mappings."""

    name: str
    column: str | None = None
    conversion: Conversion = "default"

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class ExportField(_Strict):
    """Campaign column (of the inbound rows) → CRM field, with a conversion."""

    campaign: SqlName
    crm: CrmName
    conversion: Conversion = "default"


class AutomaticIndex(_Strict):
    """Incremental import: only records whose index field lies in [last end, now)."""

    enabled: bool = True
    option: str | None = None  # default LASTIMPORT_<account>_<activity>
    field: str | None = None  # default: the connector's first index field (its modification stamp)


class CrmActivity(_Activity):
    """The CRM connector: import, export, import-deleted, delete (docs/workflows.md)."""

    type: Literal["crm"]
    operation: Literal["import", "export", "import-deleted", "delete"]
    account: str | None = None  # default: the workflow's account
    object: CrmName
    # import
    fields: list[CrmField] = Field(default_factory=list)
    filter: Any = None
    order_by: list[OrderBy] = Field(default_factory=list)
    automatic_index: AutomaticIndex | None = None
    ids_from: str | None = None  # import the records whose ids are in this column of the inbound rows
    query_all: bool = False  # include deleted and archived records (queryAll)
    publish: bool = True  # an import is a backfill of the CRM change topic
    # export
    mapping: list[ExportField] = Field(default_factory=list)
    key: SqlName = "id"  # Campaign key column: sent as the external id, journal key
    crm_id: SqlName = "crm_id"  # column holding the CRM id: update when set, insert otherwise
    external_id: CrmName | None = None  # CRM field holding the Campaign key; default: the connector's
    write_back: TableName | None = None  # Campaign table whose rows get the new CRM ids (crm_account, crm_id)
    batch: bool = False  # Bulk API 2.0 instead of sObject Collections
    batch_size: int = Field(200, ge=1, le=200)
    assignment_rule: str = "none"  # none | default | <AssignmentRule id>
    # import-deleted
    start: Any = None
    end: Any = None
    retention_days: int = Field(15, ge=1)
    # delete
    remote_id: str | None = None  # a column, or a template such as "{crm_id}"
    # outcomes
    rejection_file: str | None = None

    _check_filter = field_validator("filter")(classmethod(lambda cls, v: _checked_filter(v, "filter")))
    _check_file = field_validator("rejection_file")(classmethod(lambda cls, v: _file_path(v)))

    @model_validator(mode="after")
    def _operation_needs(self) -> "CrmActivity":
        need = {"export": ("mapping",), "import-deleted": ("start", "end"), "delete": ("remote_id",)}
        for key in need.get(self.operation, ()):
            if not getattr(self, key):
                raise ValueError(f"operation {self.operation} needs `{key}:`")
        if self.batch and self.assignment_rule != "none":
            raise ValueError("assignment_rule: Bulk API 2.0 jobs (batch: true) ignore the Sforce-Auto-Assign header "
                             "and the connector's writer does not name a rule in its jobs yet; remove batch: true "
                             "(sObject Collections apply the rule) or assignment_rule:")
        for date_key in ("start", "end"):
            value = getattr(self, date_key)
            if value is not None:
                filters.parse_moment(value)  # a clear message now rather than at run time
        return self


class EnrichKey(_Strict):
    source: str  # column of the inbound rows
    target: str  # column of the Campaign table
    exact: bool = False  # default: case- and space-insensitive, like the two-way sync's matching


class EnrichActivity(_Activity):
    """Link rows to existing Campaign records: adds the matched row's key (and `columns`) to each row."""

    type: Literal["enrich", "reconcile"]
    table: str
    keys: list[EnrichKey] = Field(min_length=1)
    key_column: str = "id"  # where the matched row's primary key goes (None when no row matched)
    columns: dict[str, str] = Field(default_factory=dict)  # row column ← Campaign column


class DeduplicateActivity(_Activity):
    """One row per key; the others go to the reject output."""

    type: Literal["deduplicate"]
    keys: list[str] = Field(min_length=1)
    keep: Literal["first", "last", "most-recent", "non-empty"] = "first"
    by: str | None = None  # the column compared by keep: most-recent

    @model_validator(mode="after")
    def _most_recent_by(self) -> "DeduplicateActivity":
        if self.keep == "most-recent" and not self.by:
            raise ValueError("keep: most-recent needs `by:` (the date column to compare)")
        return self


class CrmLink(_Strict):
    """Rows carry a CRM id: link them (crm_account, crm_id) as the two-way sync does."""

    id: str = "Id"  # column of the rows holding the CRM id
    account: str | None = None
    object: str


class UpdateDataActivity(_Activity):
    """Insert / update / insert-or-update / delete Campaign rows through the Campaign writer."""

    type: Literal["update-data"]
    table: str
    operation: Literal["insert", "update", "insert-or-update", "delete"] = "insert-or-update"
    key: str | None = "id"  # column of the rows holding the Campaign key
    crm_link: CrmLink | None = None
    columns: dict[str, str] | None = None  # Campaign column ← row column; None: the row's columns the table has
    batch_size: int = Field(500, ge=1)
    only_if_different: bool = True


class UnionActivity(_Activity):
    type: Literal["union"]
    distinct_on: list[str] = Field(default_factory=list)


class WaitActivity(_Activity):
    type: Literal["wait"]
    seconds: float = Field(ge=0)


class ScriptActivity(_Activity):
    """A Python hook: `function(rows, context) -> rows | None`."""

    type: Literal["script"]
    function: str  # "package.module:function", or a function name with `file:`
    file: str | None = None


Activity = Annotated[Union[QueryActivity, CrmActivity, EnrichActivity, DeduplicateActivity, UpdateDataActivity,
                           UnionActivity, WaitActivity, ScriptActivity], Field(discriminator="type")]
ACTIVITY_TYPES = ("query", "crm", "enrich", "reconcile", "deduplicate", "update-data", "union", "wait", "script")


class Workflow(_Strict):
    name: Label
    label: Label | None = None
    account: str = "salesforce"  # default CRM account of crm activities
    schedule: str | None = None  # cron expression, honoured by `crmsync run`
    activities: list[Activity] = Field(min_length=1)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{shown(value, 40)} is not a cron expression (five fields: minute hour day month weekday, "
                             "e.g. '*/15 * * * *')")
        return value

    @model_validator(mode="after")
    def _graph(self) -> "Workflow":
        names = [a.name for a in self.activities]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"activity name {name!r} is used twice")
        for i, activity in enumerate(self.activities):
            for output, target in activity.then.targets():
                if target not in names:
                    raise ValueError(f"activities.{i}.then.{output}: activity {activity.name!r} sends its {output} "
                                     f"output to {target!r}, which is not an activity of this workflow "
                                     f"({', '.join(names)})")
        order(self)  # refuses cycles
        return self

    def activity(self, name: str) -> Activity:
        return next(a for a in self.activities if a.name == name)

    def account_of(self, activity: CrmActivity) -> str:
        return activity.account or self.account


def order(workflow: Workflow) -> list[str]:
    """Activities in an order where every activity comes after all that feed it (Kahn); a cycle is refused."""
    inbound = {a.name: 0 for a in workflow.activities}
    for activity in workflow.activities:
        for _, target in activity.then.targets():
            inbound[target] += 1
    ready = [a.name for a in workflow.activities if inbound[a.name] == 0]
    result: list[str] = []
    while ready:
        name = ready.pop(0)
        result.append(name)
        for _, target in workflow.activity(name).then.targets():
            inbound[target] -= 1
            if inbound[target] == 0:
                ready.append(target)
    if len(result) != len(workflow.activities):
        stuck = [name for name, count in inbound.items() if count > 0]
        raise ValueError(f"the transitions form a loop through {', '.join(stuck)}; a workflow is run once, "
                         "front to back (schedule it to repeat)")
    return result


def _format(source: str, error: ValidationError) -> str:
    return explain_validation_error(source, error, union="activities", tags=ACTIVITY_TYPES, kind="activity",
                                    docs="docs/workflows.md", show_input=False)


def load(path: str | Path) -> Workflow:
    """Read and validate a workflow file; WorkflowError tells the user the file, the key and the fix."""
    file = Path(path)
    if not file.exists():
        raise WorkflowError(f"{file}: no such workflow file")
    data = read_yaml_mapping(file, "a mapping with name: and activities:", WorkflowError)
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        raise WorkflowError(_format(str(file), exc)) from None
