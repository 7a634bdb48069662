"""Opening a study: storage, sampler, compatibility check, recovery of abandoned trials.

Studies are plain Optuna studies, so `optuna trials`, `optuna best-trials` and optuna-dashboard
read them unmodified. We run our own ask/tell loop instead of Study.optimize, so a few things
optimize does with Optuna's internals (heartbeats, stale trials, an enqueued trial's params)
we do too: every such access is in one class at the end of this file, `OptunaInternals`,
with the reason for each; the rest of autoresearch uses the public API only.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from autoresearch.backends import file_of, open_backend, scrub
from autoresearch.errors import IncompatibleStudy, StorageError
from autoresearch.fleet import derived_seed, worker_id
from autoresearch.study_file import StudySpec
from autoresearch.trial import kill_group

HASH_KEY = "autoresearch_config_hash"
IDENTITY_KEY = "autoresearch_config"


def open_storage(spec: StudySpec, *, create: bool = True) -> optuna.storages.BaseStorage:
    """The study's storage (backends.py); heartbeats on, so a dead worker's trial is retried."""
    where = f"{spec.path}: study.storage"
    return open_backend(
        spec.storage_url,
        where,
        create=create,
        heartbeat_interval=spec.heartbeat_interval,
        grace_period=spec.grace_period,
        stale_callback=RetryStale(max_retry=3),
    )


class RetryStale(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker stopped beating; the retry carries only
    `retry_of` and the baseline role, not the dead worker's pid, config and timings."""

    def __init__(self, max_retry: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental since 2.8": stable in practice
            super().__init__(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial.user_attrs = retry_attrs(trial.number, trial.user_attrs)
        super().__call__(study, trial)


def fail_stale(study: optuna.Study, grace_s: int | None) -> list[int]:
    """Optuna's fail_stale_trials, plus a fail_reason written while the trial is still RUNNING
    (Optuna refuses attrs on finished trials). Only the worker whose FAIL lands retries it."""
    internals = OptunaInternals(study)
    failed = []
    for ft in internals.stale_trials():
        w = ft.user_attrs.get("worker") or {}
        reason = (
            f"abandoned: no heartbeat from worker {w.get('host', '?')}:{w.get('pid', '?')} "
            f"for more than {grace_s} s (study.grace_period)"
        )
        try:
            internals.set_user_attr(ft, "fail_reason", reason)
            if internals.fail(ft):
                failed.append(ft)
        except UpdateFinishedTrialError:
            continue  # another worker failed it first
    for ft in failed:
        internals.retry_stale(ft)
    return [ft.number for ft in failed]


def make_sampler(
    spec: StudySpec, trials_so_far: int = 0, worker: str | None = None
) -> optuna.samplers.BaseSampler:
    """The study's sampler (tpe | gp | random | nsga2 | auto: the choice and its rule live in
    autoresearch/sampler.py), seeded per trial count (and worker): see fleet.derived_seed."""
    from autoresearch.sampler import make_sampler as build

    seed = derived_seed(spec.seed, trials_so_far, worker_id() if worker is None else worker)
    return build(
        spec.sampler, seed=seed, space=spec.space, n_trials=spec.n_trials, source=str(spec.path)
    )


def open_study(spec: StudySpec, *, create: bool = True) -> optuna.Study:
    """Create or load the study; refuse a stored study whose objectives/space/model differ.

    create=False (status, show, export...) never creates a study file or a study.
    """
    db = file_of(spec.storage_url)
    if not create and db is not None and not db.exists():
        raise StorageError(
            f"{spec.path}: no study {spec.name!r} in {spec.storage} (no such file yet); "
            f"start it with `autoresearch run {spec.path}`"
        )
    storage = open_storage(spec, create=create)
    try:
        found = [s for s in storage.get_all_studies() if s.study_name == spec.name]
    except Exception as e:  # an empty/foreign database file: SQLAlchemy's many error types
        why = scrub(str(e).strip().splitlines()[0] if str(e).strip() else "", spec.storage_url)
        raise StorageError(
            f"{spec.path}: study.storage {spec.storage}: cannot read ({why})"
        ) from None
    if not found:
        if not create:
            raise StorageError(
                f"{spec.path}: no study {spec.name!r} in {spec.storage}; "
                f"start it with `autoresearch run {spec.path}`"
            )
        # Several `run`s may start a new study at once: the losers load the winner's study.
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            directions=spec.directions,
            sampler=make_sampler(spec),
            load_if_exists=True,
        )
        if study.user_attrs.get(HASH_KEY) is None and not study.trials:
            _tag(study, spec)
        return _checked(study, spec)
    # Loaded with a stand-in sampler: the real one's seed depends on the trials so far.
    study = optuna.load_study(
        storage=storage, study_name=spec.name, sampler=optuna.samplers.RandomSampler()
    )
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    return _checked(study, spec)


def _tag(study: optuna.Study, spec: StudySpec) -> None:
    study.set_user_attr(HASH_KEY, spec.digest())
    study.set_user_attr(IDENTITY_KEY, spec.identity())
    study.set_user_attr("study_file", str(spec.path))
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names([m for m, _ in spec.objectives])  # not "Objective 0" in tools


def _checked(study: optuna.Study, spec: StudySpec) -> optuna.Study:
    stored = study.user_attrs.get(HASH_KEY)
    directions = [d.name.lower() for d in study.directions]
    if stored is None and not study.trials and directions == spec.directions:
        # Killed between create_study and tagging it: nothing to be incompatible with.
        _tag(study, spec)
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
    internals = OptunaInternals(study)
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
        reason = f"abandoned: run pid {w.get('pid')} died mid-trial"
        internals.set_user_attr(ft, "fail_reason", reason)
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
        params = {**internals.fixed_params(ft), **ft.params}
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


def still_running(study: optuna.Study, trial: optuna.Trial) -> bool:
    """The trial's stored state is RUNNING (a Ctrl-C may land after it was told)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.number == trial.number for t in running)


# ---- the one place that reaches past Optuna's public API ------------------------------------


class OptunaInternals:
    """Optuna internals our ask/tell loop needs, each with why the public API does not do.

    Study.optimize runs heartbeats and fails stale trials itself; we drive trials with
    ask/tell, so we do both here, with the storage calls (keyed by the storage's trial id)
    they take, as Optuna's own optimize and fail_stale_trials do (read against Optuna 5.0).
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        # Study has no public getter for its storage or its id; every call below needs them.
        self._storage = study._storage
        self._study_id = study._study_id

    def heartbeat(self, trial: optuna.Trial | FrozenTrial) -> Any:
        """Context manager beating for `trial` while it runs: the thread Study.optimize starts
        (a no-op on a storage without heartbeats)."""
        from optuna.storages._heartbeat import get_heartbeat_thread

        return get_heartbeat_thread(trial._trial_id, self._storage)

    def stale_trials(self) -> list[FrozenTrial]:
        """RUNNING trials whose worker stopped beating: public `fail_stale_trials` would fail
        them before we could record why (JournalStorage has no heartbeats: none)."""
        from optuna.storages._heartbeat import BaseHeartbeat

        s = self._storage
        if not isinstance(s, BaseHeartbeat) or s.get_heartbeat_interval() is None:
            return []
        return [s.get_trial(tid) for tid in s._get_stale_trial_ids(self._study_id)]

    def set_user_attr(self, trial: FrozenTrial, key: str, value: Any) -> None:
        """A user attr on a trial this process has no Trial object for (another run's)."""
        self._storage.set_trial_user_attr(trial._trial_id, key, value)

    def fail(self, trial: FrozenTrial) -> bool:
        """A stale trial of another worker -> FAIL in storage, as fail_stale_trials does
        (study.tell is for this process's own trials); raises UpdateFinishedTrialError when
        another worker failed it first."""
        return self._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)

    def retry_stale(self, trial: FrozenTrial) -> None:
        """Run the storage's stale-trial callback (RetryStale) as fail_stale_trials does."""
        callback = self._storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            # A copy: the callback edits the trial it gets (RetryStale rewrites user_attrs).
            callback(self.study, copy.deepcopy(self._storage.get_trial(trial._trial_id)))

    def fixed_params(self, trial: optuna.Trial | FrozenTrial) -> dict[str, Any]:
        """The params enqueue_trial stored for a trial (its "fixed_params" system attr): an
        interrupted baseline may have been cut off before suggest recorded them as params."""
        attrs = self._storage.get_trial_system_attrs(trial._trial_id)
        return dict(attrs.get("fixed_params") or {})

    def create_running(self, params: dict[str, Any], user_attrs: dict[str, Any]) -> optuna.Trial:
        """A trial created RUNNING for this process with enqueue-style fixed params: unlike an
        enqueued one, no other worker can take it (a fleet machine's own baseline)."""
        tid = self._storage.create_new_trial(self._study_id)
        self._storage.set_trial_system_attr(tid, "fixed_params", params)
        for key, value in user_attrs.items():
            self._storage.set_trial_user_attr(tid, key, value)
        return optuna.Trial(self.study, tid)
