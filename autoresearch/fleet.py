"""Several workers, possibly several machines, on one study: who measured what, and where.

- Every trial carries `machine_fingerprint` (engine.measure.machine's id of stable hardware/OS
  fields).
- `machines = "one"` (default): a worker on another machine is refused, since its timings are
  not comparable. `machines = "fleet"`: any machine may join; every machine measures its own
  baseline, and fronts/exports are computed per machine (`on_machine`), never mixing timings.
- Each worker process samples from its own seed (study seed + trials so far + worker id), so a
  resumed or parallel study does not replay the same configs; a config that this machine has
  already measured (or is measuring) is skipped as a duplicate, never measured twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoresearch.errors import OtherMachine
from autoresearch.study_file import StudySpec

MACHINE_KEY = "machine_fingerprint"  # trial and study user attr


@functools.cache
def this_machine(disk: Path | None = None) -> str:
    """This machine's fingerprint id, with the disk that holds `disk` (the cache dir: where the
    stores are read from). No disk measurement: it must be instant and stable."""
    from engine.api import machine_id

    if disk is not None:
        while not disk.exists() and disk != disk.parent:
            disk = disk.parent  # the cache dir may not exist yet; its disk does
    return machine_id(disk)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def derived_seed(seed: int | None, trials_so_far: int, worker: str) -> int | None:
    """The sampler seed for the next trial: the study seed mixed with the number of trials
    so far (a resume never replays earlier samples) and, while other workers are measuring,
    this worker's id (parallel workers draw different configs). A lone process stays
    reproducible: worker is "" then."""
    if seed is None:
        return None
    body = f"{seed}:{trials_so_far}:{worker}".encode()
    return int.from_bytes(hashlib.sha256(body).digest()[:4], "big")


def others_running(study: optuna.Study) -> bool:
    """Does another process hold a RUNNING trial of this study right now?"""
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.user_attrs.get("worker", me) != me for t in running)


def check_machine(study: optuna.Study, spec: StudySpec) -> str:
    """Tag a new study with this machine; refuse a one-machine study from another machine."""
    me = this_machine(spec.cache_dir)
    theirs = study.user_attrs.get(MACHINE_KEY)
    if theirs is None:
        study.set_user_attr(MACHINE_KEY, me)
        return me
    if spec.machines != "fleet" and theirs != me:
        raise OtherMachine(
            f"{spec.path}: study {spec.name!r} is measured on machine {theirs} and this is "
            f"{me}: timings of different machines are not comparable. Set "
            'study.machines = "fleet" to keep results per machine, or use another study.name'
        )
    return me


def on_machine(trials: Iterable[FrozenTrial], machine: str | None) -> list[FrozenTrial]:
    """The trials measured on `machine` (all of them when None): what a front may compare.

    Trials from before fingerprints were recorded are kept: they predate fleets.
    """
    trials = list(trials)
    if machine is None:
        return trials
    return [t for t in trials if t.user_attrs.get(MACHINE_KEY, machine) == machine]


def machines_of(study: optuna.Study) -> list[str]:
    """Every machine fingerprint that measured a trial, the study's first machine first."""
    first = study.user_attrs.get(MACHINE_KEY)
    seen = [first] if first else []
    for t in study.get_trials(deepcopy=False):
        m = t.user_attrs.get(MACHINE_KEY)
        if m and m not in seen:
            seen.append(m)
    return seen


def results_machine(study: optuna.Study, spec: StudySpec, asked: str | None) -> str | None:
    """Which machine's trials show/export/report use: all for a one-machine study; in a fleet
    the one asked for (--machine), else this machine if it measured any, else the first."""
    if spec.machines != "fleet":
        return None
    if asked is not None:
        return asked
    have = machines_of(study)
    here = this_machine(spec.cache_dir)
    return here if here in have else (have[0] if have else here)


def config_key(config: dict[str, Any], store_fingerprint: str) -> str:
    return json.dumps({"config": config, "store": store_fingerprint}, sort_keys=True)


def duplicate_of(
    study: optuna.Study, number: int, key: str, machine: str, fleet: bool
) -> int | None:
    """A finished or running trial on this machine with the same config and store, if any."""
    states = (TrialState.COMPLETE, TrialState.RUNNING)
    for t in study.get_trials(deepcopy=False, states=states):
        if t.number == number or "config" not in t.user_attrs:
            continue
        if t.state == TrialState.RUNNING and t.number > number and "child_pid" not in t.user_attrs:
            # Two workers on one config, neither probing yet: the older trial measures it.
            # (child_pid is written under the probe lock, so a recheck there sees it.)
            continue
        if fleet and t.user_attrs.get(MACHINE_KEY) != machine:
            continue  # another machine's measurement of it is not ours
        fp = t.user_attrs.get("store_fingerprint", "")
        if config_key(t.user_attrs["config"], fp) == key:
            return t.number
    return None
