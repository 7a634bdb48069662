"""`autoresearch run`: the ask/tell loop that turns sampled knobs into measured trials.

Per trial: ask -> sample knobs -> pick/build the store variant -> run the probe in a child ->
store metrics, spread and raw samples as user attrs -> set constraints -> tell. Failures of
one trial (bad config, pack failure, probe crash/hang/garbage) are told FAIL with
`fail_reason` and the loop goes on.

Ctrl-C: the running probe is killed, its trial is told FAIL "interrupted" and its parameters
are re-enqueued, so the next `autoresearch run` measures it again; then we exit 130.
kill -9: the trial stays RUNNING in storage; the next run on this host marks it FAIL
"abandoned" and re-enqueues it (storage.recover_abandoned), and any live worker of the study
does the same once its heartbeat is older than study.grace_period (Optuna's heartbeat).
SIGTERM is handled like Ctrl-C (cli.py turns it into KeyboardInterrupt).

Many workers (`autoresearch worker`, or `run` on a shared storage) may run this loop on one
study: each probe holds the machine's probe lock (hostlock.py), trials carry the machine's
fingerprint, and a config this machine already measured is skipped (fleet.py).

Cheap first fidelity (`[fidelity] screen = "trace"`): cache/prefetch-only candidates are first
estimated by the trace simulator (autoresearch/screen.py); unpromising ones are told PRUNED
with their estimate and never measured, so the study holds real measurements only.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from autoresearch import fleet
from autoresearch.backends import file_of
from autoresearch.display import Display
from autoresearch.errors import AutoresearchError
from autoresearch.hostlock import ask_lock
from autoresearch.optuna_view import label_study
from autoresearch.record import fail, requeue, skip_duplicate, store_metrics, store_noise_floor
from autoresearch.storage import (
    OptunaInternals,
    fail_stale,
    make_sampler,
    open_study,
    recover_abandoned,
    still_running,
    worker_attrs,
)
from autoresearch.study_file import StudySpec
from autoresearch.trial import ProbeResult, run_probe
from autoresearch.variants import Variants
from engine import api
from engine.errors import ConfigError


@dataclass
class RunSummary:
    completed: int = 0
    failed: int = 0
    screened: int = 0  # PRUNED by the trace simulator, never measured
    duplicates: int = 0  # PRUNED: this machine already measured (or is measuring) the config
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.screened + self.duplicates


def run_study(
    spec: StudySpec,
    *,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    display: Display | None = None,
    until_stopped: bool = False,
) -> RunSummary:
    """Run up to n_trials new trials (or until timeout_s); resumes a stored study.

    until_stopped (`autoresearch worker` without limits): ignore the study file's n_trials and
    timeout_s, which are per `run`, and take trials until Ctrl-C / SIGTERM.
    """
    if not until_stopped:
        n_trials = n_trials if n_trials is not None else spec.n_trials
        timeout_s = timeout_s if timeout_s is not None else spec.timeout_s
    if n_trials is None and timeout_s is None and not until_stopped:
        raise AutoresearchError(
            f"{spec.path}: neither study.n_trials nor study.timeout_s is set; give one, or "
            "pass --n-trials / --timeout"
        )
    # Optuna's per-trial INFO lines would interleave with our display; warnings still show.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.probe_command is None:  # real probes: each loads the kernels compiled once here
        api.compile_kernels()
    try:
        return _run(spec, n_trials, timeout_s, display)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise AutoresearchError(_disk_full(spec, e.filename)) from None
        raise
    except Exception as e:  # SQLite reports a full disk as an OperationalError
        if "database or disk is full" in str(e):
            raise AutoresearchError(_disk_full(spec, spec.storage)) from None
        raise


def _disk_full(spec: StudySpec, where: object) -> str:
    return (
        f"{spec.path}: disk full while writing {where or 'the study'}; free space (stores "
        f"and models are in {spec.cache_dir}) and rerun the same command to resume"
    )


def _run(
    spec: StudySpec, n_trials: int | None, timeout_s: float | None, display: Display | None
) -> RunSummary:
    study = open_study(spec)
    label_study(study, spec)  # optuna-dashboard / `optuna` CLI show the metric names
    machine = fleet.check_machine(study, spec)
    display = display or Display(spec, n_trials, timeout_s)
    for number in recover_abandoned(study):
        display.note(f"trial {number}: abandoned by a killed run; marked FAIL and re-enqueued")
    if spec.machines != "fleet" and not _has_baseline(study):
        # Trial 0 is the engine's default config, measured with extra repeats: the noise floor.
        # A baseline that failed is measured again: without it there is no floor and no ratio.
        params = spec.space.baseline_params()
        study.enqueue_trial(params, user_attrs={"baseline": True, "baseline_knobs": list(params)})
    variants = Variants(spec, progress=display.interactive, note=print)
    if spec.store_path is None:
        display.phase("synthesizing")
        variants.model_dir()  # synthesize before the live display: synth has its own bar
    variants.note = display.note
    summary = RunSummary()
    t0 = time.monotonic()
    with display:
        display.update_front(study)
        while n_trials is None or summary.done < n_trials:
            if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                break
            trial: optuna.Trial | None = None
            try:
                for number in fail_stale(study, spec.grace_period):
                    display.note(f"trial {number}: its worker stopped; marked FAIL and retried")
                with _signals_deferred():  # a trial is never created without us knowing it
                    trial = _next_trial(spec, study, machine)
                with OptunaInternals(study).heartbeat(trial):
                    ok = _one_trial(spec, study, trial, variants, display, machine)
            except UpdateFinishedTrialError:
                # Our heartbeat stopped long enough for another worker to retry this trial.
                display.note(f"trial {trial.number if trial else '?'}: retried elsewhere")
                continue
            except OSError as e:
                if trial is not None and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    with contextlib.suppress(Exception):  # the study's own disk may be full
                        fail(study, trial, f"disk full: {e.filename or e}")
                        requeue(study, trial)
                raise
            except KeyboardInterrupt:
                summary.interrupted = True
                # Ctrl-C may land after the trial was told (complete, failed, screened).
                if trial is not None and still_running(study, trial):
                    fail(study, trial, "interrupted: Ctrl-C or SIGTERM during the trial")
                    requeue(study, trial)
                    display.note(f"trial {trial.number}: interrupted; re-enqueued for the next run")
                break
            summary.completed += ok is True
            summary.failed += ok is False
            summary.screened += ok is None
            summary.duplicates += ok == "duplicate"
            display.trial_done(study, trial.number, summary.done)
    return summary


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM while a trial is being created: delivered (as KeyboardInterrupt)
    once the caller has the trial and can fail and re-enqueue it, instead of leaving it
    RUNNING and unknown."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _next_trial(spec: StudySpec, study: optuna.Study, machine: str) -> optuna.Trial:
    """The next trial to measure; in a fleet, this machine's own baseline first."""
    # A fresh seed per trial (fleet.derived_seed); samplers keep no other state between trials.
    worker = fleet.worker_id() if fleet.others_running(study) else ""
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)), worker)
    if spec.machines == "fleet" and not _has_baseline(study, machine):
        # Created RUNNING for us, not enqueued: another machine must not take our baseline.
        params = spec.space.baseline_params()
        attrs = {"baseline": True, "baseline_knobs": list(params)}
        trial = OptunaInternals(study).create_running(params, attrs)
    else:
        db = file_of(spec.storage_url) if spec.storage_url.startswith("sqlite") else None
        with ask_lock(spec.cache_dir, db), warnings.catch_warnings():
            # "Heartbeat is supposed to be used with Study.optimize": we run its thread ourselves.
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()  # the WAITING -> RUNNING pop is what the lock protects
    trial.set_user_attr("worker", worker_attrs())
    trial.set_user_attr(fleet.MACHINE_KEY, machine)
    return trial


def _has_baseline(study: optuna.Study, machine: str | None = None) -> bool:
    """A baseline trial is complete, waiting or being measured (on `machine`, in a fleet)."""
    alive = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    trials = [t for t in study.get_trials(states=alive) if t.user_attrs.get("baseline")]
    if machine is not None:
        trials = [t for t in trials if t.user_attrs.get(fleet.MACHINE_KEY, machine) == machine]
    return bool(trials)


def _one_trial(
    spec: StudySpec,
    study: optuna.Study,
    trial: optuna.Trial,
    variants: Variants,
    display: Display,
    machine: str,
) -> bool | str | None:
    """True: measured; False: failed; None: screened out; "duplicate": measured before."""
    baseline = bool(trial.user_attrs.get("baseline"))
    # The baseline suggests only the knobs that can hold the engine default exactly (enqueued
    # as fixed params), so its config is EngineConfig()'s, not a sample that looks like it.
    only = set(trial.user_attrs.get("baseline_knobs", [])) if baseline else None
    knobs = spec.space.suggest(trial, only=only)
    if not baseline:
        # The space's [fixed] values shape every searched trial; the baseline stays the pure
        # engine default so "tuned vs default" compares against what an untuned user gets.
        knobs = {**spec.space.fixed, **knobs}
    display.start_trial(trial.number, knobs, baseline)
    display.phase("packing")
    try:
        store = variants.get(
            knobs.get("quant_bits"), knobs.get("quant_group_size"), knobs.get("layout")
        )
    except AutoresearchError as e:
        fail(study, trial, f"store variant: {e}")
        return False
    extra: dict[str, Any] = {}
    if spec.memory_budget is not None:
        extra["memory_budget_bytes"] = spec.memory_budget  # the engine enforces it too
    elif spec.expert_memory_fraction is not None:  # the same relative budget for every trial
        extra["expert_memory_fraction"] = spec.expert_memory_fraction
    try:
        from autoresearch.space import to_config

        config = to_config(
            knobs, expert_bytes=store.expert_bytes, extra=extra, top_k=store.top_k or None
        )
    except ConfigError as e:
        fail(study, trial, f"config: {e}")
        return False
    trial.set_user_attr("store", str(store.path))
    trial.set_user_attr("store_fingerprint", store.fingerprint)
    trial.set_user_attr("config", config.to_dict())
    key = fleet.config_key(config.to_dict(), store.fingerprint)

    def twin() -> int | None:
        return fleet.duplicate_of(study, trial.number, key, machine, spec.machines == "fleet")

    if (first := twin()) is not None:
        return skip_duplicate(study, trial, first, display)
    if spec.screen == "trace" and not baseline:
        display.phase("screening")
    if spec.screen == "trace" and not baseline and not _screen(spec, study, trial, store, config):
        display.note(f"trial {trial.number}: screened out by the trace simulator")
        return None
    required = sorted({m for m, _ in spec.objectives} | {c.metric for c in spec.constraints})
    repeats = max(spec.repeats, spec.baseline_repeats) if baseline else spec.repeats

    def measure(suite: Any = spec.suite) -> ProbeResult:  # None: the store's own suite
        return run_probe(
            config,
            store=store.path,
            suite=suite,
            repeats=repeats,
            cold=spec.cold,
            timeout_s=spec.trial_timeout_s * (repeats / max(spec.repeats, 1)),
            required=required,
            template=spec.probe_command,
            on_start=lambda pid: trial.set_user_attr("child_pid", pid),
            lock_dir=spec.cache_dir,
            # Again under the probe lock: a twin started by another worker is visible by now.
            recheck=lambda: None if (t := twin()) is None else str(t),
        )

    # Search hooks (autoresearch/fidelity.py, racing.py): a short probe first, then racing.
    if spec.screen == "probe" and not baseline:
        from autoresearch.fidelity import cheap_probe

        if not cheap_probe(study, trial, spec, store.path, measure):
            display.note(f"trial {trial.number}: the cheap probe says it cannot reach the front")
            return None
    display.phase("probing")
    if spec.racing is not None and not baseline:
        from autoresearch.racing import race_trial

        result = race_trial(study, trial, spec.objectives, spec.racing, measure)
    else:
        result = measure()
        trial.set_user_attr("measurements", repeats)
    if result.skipped is not None:
        return skip_duplicate(study, trial, int(result.skipped), display)
    trial.set_user_attr("wall_s", round(result.wall_s, 3))
    if result.probe_start is not None:
        trial.set_user_attr("probe_start", result.probe_start)
        trial.set_user_attr("probe_end", result.probe_end)
    if result.error is not None:
        fail(study, trial, result.error)
        return False
    store_metrics(study, trial, result)
    for c in spec.constraints:
        trial.set_constraint(c.metric, c.value(result.metrics))
    values = [float(result.metrics[m]) for m, _ in spec.objectives]
    if baseline:
        # Before tell: a complete baseline is never re-run, so a kill between would lose it.
        store_noise_floor(study, result.metrics, machine)
    study.tell(trial, values)
    return True


_SCREENERS: dict[str, Any] = {}  # store path -> Screener, recorded once per process


def _screen(
    spec: StudySpec, study: optuna.Study, trial: optuna.Trial, store: Any, config: Any
) -> bool:
    """True = measure for real; False = told PRUNED with the simulator's estimate."""
    from autoresearch.screen import Screener

    key = str(store.path)
    if key not in _SCREENERS:
        _SCREENERS[key] = Screener.record(
            store.path, spec.work_dir, spec.screen_keep, spec.trial_timeout_s
        )
    keep, est = _SCREENERS[key].decide(config)
    trial.set_user_attr("screen_estimate", {k: float(v) for k, v in est.items()})
    if not keep:
        from autoresearch.fidelity import record_saved

        record_saved(study)  # one study-level count of full probes saved, whichever screen
        study.tell(trial, state=TrialState.PRUNED)
    return keep
