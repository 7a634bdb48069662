"""Opening a study: storage URL, sampler, compatibility check, recovery of abandoned trials.

Everything here goes through Optuna's public API so `optuna trials`, `optuna best-trials` and
optuna-dashboard read the same study unmodified.
"""

from __future__ import annotations

import os
import socket
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoresearch.errors import IncompatibleStudy, StorageError
from autoresearch.study_file import StudySpec
from autoresearch.trial import kill_group

HASH_KEY = "autoresearch_config_hash"
IDENTITY_KEY = "autoresearch_config"


def open_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    url = spec.storage
    if url.startswith("sqlite:///"):
        # SQLite creates the file but not its directory; a missing dir is the usual typo.
        db = Path(url.removeprefix("sqlite:///"))
        if str(db) != ":memory:" and not db.parent.is_dir():
            raise StorageError(
                f"{spec.path}: study.storage: directory {db.parent} does not exist "
                f"(from {url!r}); create it or fix the URL"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
            return optuna.storages.RDBStorage(url)
    except Exception as e:  # SQLAlchemy raises many types; all mean "cannot open"
        raise StorageError(
            f"{spec.path}: study.storage: cannot open {url!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); use e.g. sqlite:///studies/x.db"
        ) from e


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    # tpe | gp | random | nsga2 | auto: the choice and its rule live in autoresearch/sampler.py.
    from autoresearch.sampler import make_sampler as build

    return build(spec.sampler, seed=spec.seed, space=spec.space, n_trials=spec.n_trials,
                 source=str(spec.path))  # fmt: skip


def open_study(spec: StudySpec, *, create: bool = True) -> optuna.Study:
    """Create or load the study; refuse a stored study whose objectives/space/model differ."""
    storage = open_storage(spec)
    exists = any(s.study_name == spec.name for s in storage.get_all_studies())
    if not exists:
        if not create:
            raise StorageError(
                f"{spec.path}: no study {spec.name!r} in {spec.storage}; "
                f"start it with `autoresearch run {spec.path}`"
            )
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            directions=spec.directions,
            sampler=make_sampler(spec),
        )
        study.set_user_attr(HASH_KEY, spec.digest())
        study.set_user_attr(IDENTITY_KEY, spec.identity())
        study.set_user_attr("study_file", str(spec.path))
        return study
    study = optuna.load_study(storage=storage, study_name=spec.name, sampler=make_sampler(spec))
    stored = study.user_attrs.get(HASH_KEY)
    directions = [d.name.lower() for d in study.directions]
    if stored is None and not study.trials and directions == spec.directions:
        # Killed between create_study and tagging it: nothing to be incompatible with.
        study.set_user_attr(HASH_KEY, spec.digest())
        study.set_user_attr(IDENTITY_KEY, spec.identity())
        return study
    if stored != spec.digest():
        old = study.user_attrs.get(IDENTITY_KEY, {})
        new = spec.identity()
        changed = sorted(k for k in new if old.get(k) != new[k]) or ["(not an autoresearch study)"]
        if not old and directions != spec.directions:
            changed = ["objectives"]  # empty and untagged, but made for other directions
        raise IncompatibleStudy(
            f"{spec.path}: study {spec.name!r} in {spec.storage} was made with different "
            f"{', '.join(changed)}; its trials are not comparable. Set study.name to a new "
            "name (e.g. "
            f"{spec.name}-2) to start a new study, or restore the old settings"
        )
    return study


def worker_attrs() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def recover_abandoned(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a dead run on this host -> FAIL 'abandoned' + re-enqueued.

    RUNNING trials of another host (a shared PostgreSQL study) or of a live process are left
    alone: they may be measuring right now.
    """
    storage = study._storage  # public methods only; Study exposes no getter for it
    host = socket.gethostname()
    retried = []
    for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = ft.user_attrs.get("worker")
        if w is None:
            # Killed between ask() and tagging the trial; give a live peer a minute to tag it.
            started = ft.datetime_start or datetime.now()
            if (datetime.now() - started).total_seconds() < 60:
                continue
            w = {"host": host, "pid": 0}
        if w.get("host") != host or _alive(int(w.get("pid", 0))):
            continue
        child = ft.user_attrs.get("child_pid")
        if child and _is_probe(int(child)):
            kill_group(int(child))  # the orphaned probe would skew the next measurement
        storage.set_trial_user_attr(
            ft._trial_id, "fail_reason", f"abandoned: run pid {w.get('pid')} died mid-trial"
        )
        study.tell(ft.number, state=TrialState.FAIL)
    # One retry per abandoned/interrupted trial, enqueued after its FAIL: a run killed between
    # the two left no retry, so every such dead local trial without one gets it now.
    trials = study.get_trials(deepcopy=False)
    has_retry = {t.user_attrs.get("retry_of") for t in trials}
    for ft in trials:
        reason = str(ft.user_attrs.get("fail_reason", ""))
        w = ft.user_attrs.get("worker") or {"host": host, "pid": 0}
        if (
            ft.state != TrialState.FAIL
            or not reason.startswith(("abandoned", "interrupted"))
            or ft.number in has_retry
            or w.get("host") != host
            or _alive(int(w.get("pid", 0)))
        ):
            continue
        params = {**ft.system_attrs.get("fixed_params", {}), **ft.params}
        study.enqueue_trial(params, user_attrs=retry_attrs(ft.number, ft.user_attrs))
        retried.append(ft.number)
    return retried


def retry_attrs(number: int, old: dict[str, Any]) -> dict[str, Any]:
    """User attrs of a re-enqueued trial: where it came from, and its baseline role if any."""
    attrs: dict[str, Any] = {"retry_of": number}
    for key in ("baseline", "baseline_knobs"):
        if key in old:
            attrs[key] = old[key]
    return attrs


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False  # our own pid: the dead run had it before us (containers restart as pid 1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmd = Path(f"/proc/{pid}/cmdline")
    # A recycled pid belongs to some other program: only an autoresearch process counts.
    return not cmd.exists() or b"autoresearch" in cmd.read_bytes()


def _is_probe(pid: int) -> bool:
    cmd = Path(f"/proc/{pid}/cmdline")
    try:
        return b"autoresearch-trial-" in cmd.read_bytes()
    except OSError:
        return False
