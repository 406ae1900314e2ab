"""Configuration: the ``[job]`` table of ``ckptd.toml`` and its command-line flags.

One table, :data:`JOB_OPTIONS`, defines every key: its kind, default and help.
The TOML loader and the ``ckptd run`` flags come from it, and docs/configuration.md is
checked against it. Precedence: flags over the file, the file over the defaults.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptd.control.keys import authorized_keys_problem, secret_key_problem
from ckptd.job_name import default_name, name_problem
from ckptd.options import (
    COUNT,
    DURATION,
    POSITIVE,
    SIGNAL,
    STRING,
    STRING_LIST,
    STRING_MAP,
    ConfigError,
    Kind,
    choice,
    duration,
    or_auto,
)
from ckptd.reporting.prometheus import parse_listen
from ckptd.storage.remote.url import check_remote_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["JOB_OPTIONS", "ConfigError", "JobConfig", "Option", "default_name", "load"]

# Lower bounds: below them a value does harm (a job saving non-stop, a busy loop) and
# is surely a slip of the unit, so it is refused rather than obeyed.
GRACE = duration(0, why="the final save needs some time")
EVERY = duration(1.0, why="leave it out for no periodic checkpoints")
KEEP_EVERY = duration(1.0)
MEMORY_EVERY = duration(1.0, why="leave it out for no memory tier")
HANG_TIMEOUT = duration(1.0, why="step reports come 0.2 s apart at the fastest")
POLL_INTERVAL = duration(0.01, why="a shorter one is a busy loop")
NOTICE_INTERVAL = duration(0.1, why="a shorter one floods the metadata service")
NOTICE_TIMEOUT = duration(0.1, why="a metadata request needs time to answer")


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _only_in_file(text: str) -> Any:
    raise ValueError("only in the config file")


BOOLEAN = Kind("true | false", _boolean, _only_in_file)


def _mode(value: Any) -> str:
    """``"0700"`` from ``"0700"``, ``"700"`` or ``"0o700"``: octal, owner rwx, no special bits."""
    text = value.lower().removeprefix("0o") if isinstance(value, str) else None
    if not text or not re.fullmatch(r"[0-7]{3,4}", text) or int(text, 8) > 0o777:
        raise ValueError(f'expected an octal mode like "0700", got {value!r}')
    if int(text, 8) & 0o700 != 0o700:
        raise ValueError(f"{value!r} must leave the owner rwx (ckptd writes and reads them)")
    return f"{int(text, 8):04o}"


MODE = Kind('octal mode, e.g. "0700"', _mode, _mode)


@dataclass(frozen=True)
class Option:
    key: str
    kind: Kind
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


JOB_OPTIONS: tuple[Option, ...] = (
    Option("name", STRING, None, "job name, used in paths and logs (default: the script's name)"),
    Option("command", STRING_LIST, None, "the command to run (default: the arguments after --)"),
    Option("cwd", STRING, None, "working directory of the job (default: the current one)"),
    Option(
        "env", STRING_MAP, {}, "extra environment of the job (flag: --env KEY=VALUE, repeatable)"
    ),
    Option(
        "run_dir",
        STRING,
        None,
        "sockets, lock, events.jsonl, signal files (default: .ckptd/<name>)",
    ),
    Option(
        "checkpoint_dir",
        STRING,
        None,
        "where checkpoints are committed (default: checkpoints/<name>)",
    ),
    Option("grace", GRACE, 25.0, "from SIGTERM to the hard deadline of the final save"),
    Option("kill_timeout", DURATION, 5.0, "after signalling the process group, until SIGKILL"),
    Option(
        "restart", choice("on-failure", "always", "never"), "on-failure", "when to relaunch the job"
    ),
    Option(
        "max_restarts", COUNT, 10, "restarts without a newly committed checkpoint before giving up"
    ),
    Option("restart_delay", DURATION, 1.0, "first backoff delay (0 allowed)"),
    Option("restart_delay_max", DURATION, 60.0, "backoff ceiling (doubling, with jitter)"),
    Option(
        "every",
        or_auto(EVERY),
        None,
        'periodic checkpoint interval; "auto": Young/Daly from measured save cost and failures',
    ),
    Option("every_min", EVERY, 60.0, 'shortest interval every = "auto" may choose'),
    Option("every_max", EVERY, 1800.0, 'longest interval every = "auto" may choose'),
    Option("mtbf", EVERY, 21600.0, 'assumed mean time between failures of a fresh job ("auto")'),
    Option(
        "memory_every",
        or_auto(MEMORY_EVERY),
        None,
        'memory-tier checkpoint interval (saves to RAM, persisted by ckptd); "auto": Young/Daly',
    ),
    Option(
        "memory_dir",
        STRING,
        None,
        "where memory-tier checkpoints live (default: a per-job directory on /dev/shm)",
    ),
    Option("memory_keep", POSITIVE, 2, "newest memory-tier checkpoints kept in RAM"),
    Option("keep_last", COUNT, 3, "newest checkpoints kept (0 = keep all)"),
    Option("keep_best", COUNT, 0, "best checkpoints kept by best_metric"),
    Option("best_metric", STRING, None, "metric name in the manifest that ranks checkpoints"),
    Option(
        "best_mode", choice("min", "max"), "min", "whether a lower or a higher metric is better"
    ),
    Option("keep_every", KEEP_EVERY, None, "also keep one checkpoint per this interval"),
    Option("request_signal", SIGNAL, None, "signal sent to the job's main process on each request"),
    Option(
        "stop_signal", SIGNAL, "SIGTERM", "signal sent to a job without a connected client on stop"
    ),
    Option(
        "hang_timeout",
        or_auto(HANG_TIMEOUT),
        "auto",
        'no ck.step() progress for this long = hung; "auto": learned from the job',
    ),
    Option("hang_min", HANG_TIMEOUT, 30.0, 'lowest timeout hang_timeout = "auto" may learn'),
    Option("watch", choice("inotify", "poll"), "inotify", "how signal files are watched"),
    Option("poll_interval", POLL_INTERVAL, 1.0, 'signal-file polling interval with watch = "poll"'),
    Option("remote", STRING, None, "fsspec URL checkpoints are uploaded to (as [storage].remote)"),
    Option("signing_key", STRING, None, "PEM EC private key that signs checkpoints ([integrity])"),
    Option("verify_key", STRING, None, "PEM EC public key: resume only signed checkpoints"),
    Option(
        "checkpoint_mode",
        MODE,
        None,
        'mode of checkpoint_dir and each checkpoint, e.g. "0700" (files: 0600); none: the umask',
    ),
)

CONTROL_OPTIONS: tuple[Option, ...] = (
    Option("bind", STRING, None, "also serve commands on this TCP endpoint (tcp://host:port)"),
    Option("publish", STRING, None, "also publish events on this TCP endpoint"),
    Option("curve_secret_key", STRING, None, "the daemon's CURVE key pair file (.key_secret)"),
    Option("curve_authorized_keys", STRING, None, "directory of authorized client public keys"),
    Option("max_message_bytes", COUNT, 65536, "larger control messages are dropped by ZeroMQ"),
    Option(
        "allow_unauthenticated",
        BOOLEAN,
        False,
        "serve a loopback bind/publish without CURVE: every local user can then act and read",
    ),
)

PREEMPTION_OPTIONS: tuple[Option, ...] = (
    Option(
        "provider",
        choice("none", "auto", "aws", "gcp", "azure"),
        "none",
        "which cloud's metadata service announces preemption (auto: probe each once)",
    ),
    Option("endpoint", STRING, None, "metadata base URL instead of the provider's own"),
    Option("interval", NOTICE_INTERVAL, 2.0, "polling interval (Azure is polled every second)"),
    Option("margin", DURATION, 5.0, "safety margin before the announced termination"),
    Option("timeout", NOTICE_TIMEOUT, 2.0, "timeout of one metadata request"),
)

SLURM_OPTIONS: tuple[Option, ...] = (
    Option(
        "requeue_signal",
        SIGNAL,
        None,
        "under SLURM, this signal to ckptd means: final checkpoint, requeue, exit",
    ),
    Option(
        "requeue_command",
        STRING_LIST,
        ["scontrol", "requeue", "$SLURM_JOB_ID"],
        "run after the final checkpoint; $VARS are expanded from the environment",
    ),
)


def _any_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table, got {value!r}")
    return dict(value)


ANY_TABLE = Kind("table", _any_table, _only_in_file)
UPLOAD_TIMEOUT = duration(1.0, why="an upload attempt needs time")

STORAGE_OPTIONS: tuple[Option, ...] = (
    Option("remote", STRING, None, "fsspec URL of the durable store: s3://, gs://, az://, file://"),
    Option("upload_timeout", UPLOAD_TIMEOUT, 600.0, "bound of one upload attempt (then a retry)"),
    Option("keep_remote", COUNT, 0, "newest remote checkpoints kept (0: the local rules)"),
    Option("options", ANY_TABLE, {}, "[storage.options]: passed verbatim to fsspec"),
)

INTEGRITY_OPTIONS: tuple[Option, ...] = (
    Option(
        "signing_key",
        STRING,
        None,
        "PEM EC private key (mode 0600) the daemon signs each committed checkpoint with",
    ),
    Option(
        "verify_key",
        STRING,
        None,
        "PEM EC public key: resume only from checkpoints whose model.sig it verifies",
    ),
)


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a positive number, got {value!r}")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"expected a positive number, got {value!r}")
    return float(value)


def _text_number(text: str) -> float:
    try:
        return _positive_number(float(text))
    except ValueError:
        raise ValueError(f"expected a positive number, got {text!r}") from None


POSITIVE_NUMBER = Kind("number > 0", _positive_number, _text_number)


def _window(value: Any) -> int:
    number = COUNT.check(value)
    if number < 2:
        raise ValueError(f"expected at least 2 losses, got {value!r}")
    return int(number)


WINDOW = Kind("integer >= 2", _window, lambda text: _window(COUNT.parse_text(text)))

GUARD_OPTIONS: tuple[Option, ...] = (
    Option(
        "nonfinite",
        choice("off", "rollback", "stop"),
        "off",
        "a NaN or infinite loss (ck.step(n, loss=...)): go back before it, or stop",
    ),
    Option(
        "spike",
        POSITIVE_NUMBER,
        None,
        "k: a loss above the mean + k sigma of the last spike_window reports diverged",
    ),
    Option("spike_window", WINDOW, 100, "reported losses the spike rule's mean and sigma cover"),
    Option("rollback_limit", COUNT, 3, "rollbacks after divergences in one run; then exit 5"),
    Option("monitor", STRING, None, "early stopping: a metric of the committed checkpoints"),
    Option("mode", choice("min", "max"), "min", "whether a lower or a higher monitor is better"),
    Option("patience", COUNT, 3, "checkpoints without improvement of monitor before stopping"),
)

METRICS_OPTIONS: tuple[Option, ...] = (
    Option("listen", STRING, None, "serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464"),
)

TABLES: dict[str, tuple[Option, ...]] = {
    "job": JOB_OPTIONS,
    "control": CONTROL_OPTIONS,
    "preemption": PREEMPTION_OPTIONS,
    "slurm": SLURM_OPTIONS,
    "metrics": METRICS_OPTIONS,
    "storage": STORAGE_OPTIONS,
    "integrity": INTEGRITY_OPTIONS,
    "guard": GUARD_OPTIONS,
}


@dataclass(frozen=True)
class ControlConfig:
    """The ``[control]`` table: the optional TCP side of the control plane."""

    bind: str | None = None
    publish: str | None = None
    curve_secret_key: Path | None = None
    curve_authorized_keys: Path | None = None
    max_message_bytes: int = 65536
    allow_unauthenticated: bool = False

    @property
    def unauthenticated(self) -> list[str]:
        """The TCP endpoints served without CURVE (only with ``allow_unauthenticated``)."""
        if self.curve_secret_key is not None:
            return []
        return [endpoint for endpoint in (self.bind, self.publish) if endpoint is not None]


@dataclass(frozen=True)
class PreemptionConfig:
    """The ``[preemption]`` table: cloud preemption notices."""

    provider: str = "none"
    endpoint: str | None = None
    interval: float = 2.0
    margin: float = 5.0
    timeout: float = 2.0


@dataclass(frozen=True)
class SlurmConfig:
    """The ``[slurm]`` table: a warning signal that means final checkpoint and requeue."""

    requeue_signal: str | None = None
    requeue_command: list[str] = field(
        default_factory=lambda: ["scontrol", "requeue", "$SLURM_JOB_ID"]
    )


@dataclass(frozen=True)
class StorageConfig:
    """The ``[storage]`` table: the durable remote copy of the checkpoints (off when None)."""

    remote: str | None = None
    upload_timeout: float = 600.0
    keep_remote: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IntegrityConfig:
    """The ``[integrity]`` table: signing committed checkpoints, verifying them at resume."""

    signing_key: Path | None = None
    verify_key: Path | None = None


@dataclass(frozen=True)
class GuardConfig:
    """The ``[guard]`` table: what a diverging loss makes ckptd do."""

    nonfinite: str = "off"
    spike: float | None = None
    spike_window: int = 100
    rollback_limit: int = 3
    monitor: str | None = None
    mode: str = "min"
    patience: int = 3

    @property
    def active(self) -> bool:
        return self.nonfinite != "off" or self.spike is not None


@dataclass(frozen=True)
class MetricsConfig:
    """The ``[metrics]`` table: a Prometheus endpoint (off when ``listen`` is None)."""

    listen: str | None = None


@dataclass(frozen=True)
class JobConfig:
    """Effective configuration of one job; paths are absolute."""

    name: str
    command: list[str]
    cwd: Path
    env: dict[str, str]
    run_dir: Path
    checkpoint_dir: Path
    grace: float = 25.0
    kill_timeout: float = 5.0
    restart: str = "on-failure"
    max_restarts: int = 10
    restart_delay: float = 1.0
    restart_delay_max: float = 60.0
    every: float | str | None = None
    every_min: float = 60.0
    every_max: float = 1800.0
    mtbf: float = 21600.0
    memory_every: float | str | None = None
    memory_dir: Path | None = None  # None: found on a RAM-backed filesystem at start
    memory_keep: int = 2
    keep_last: int = 3
    keep_best: int = 0
    best_metric: str | None = None
    best_mode: str = "min"
    keep_every: float | None = None
    request_signal: str | None = None
    stop_signal: str = "SIGTERM"
    hang_timeout: float | str | None = "auto"
    hang_min: float = 30.0
    watch: str = "inotify"
    poll_interval: float = 1.0
    checkpoint_mode: str | None = None
    control: ControlConfig = field(default_factory=ControlConfig)
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    resume_from: str | None = None  # ``ckptd run --resume-from``: a step or a path, first launch
    source: str = field(default="defaults", compare=False)


def load(
    config_file: str | os.PathLike[str] | None,
    flags: dict[str, Any],
    base: Path | None = None,
) -> JobConfig:
    """Merge defaults, the ``[job]`` table of ``config_file`` and ``flags`` into a JobConfig.

    Raises ConfigError with a one-line message naming the key (or the file) at fault.
    ``flags`` hold already-parsed values keyed by option key; None means "not given".
    """
    base = base or Path.cwd()
    values = {option.key: option.default for option in JOB_OPTIONS}
    control = {option.key: option.default for option in CONTROL_OPTIONS}
    preemption = {option.key: option.default for option in PREEMPTION_OPTIONS}
    slurm = {option.key: option.default for option in SLURM_OPTIONS}
    metrics = {option.key: option.default for option in METRICS_OPTIONS}
    storage = {option.key: option.default for option in STORAGE_OPTIONS}
    integrity = {option.key: option.default for option in INTEGRITY_OPTIONS}
    guard = {option.key: option.default for option in GUARD_OPTIONS}
    if config_file is not None:
        tables = _read_tables(Path(config_file))
        values.update(tables.get("job", {}))
        control.update(tables.get("control", {}))
        preemption.update(tables.get("preemption", {}))
        slurm.update(tables.get("slurm", {}))
        metrics.update(tables.get("metrics", {}))
        storage.update(tables.get("storage", {}))
        integrity.update(tables.get("integrity", {}))
        guard.update(tables.get("guard", {}))
    if preemption["endpoint"] is not None and not re.match(r"^https?://", preemption["endpoint"]):
        raise ConfigError(
            f"[preemption].endpoint: expected an http:// URL, got {preemption['endpoint']!r}"
        )
    values["preemption"] = PreemptionConfig(**preemption)
    values["slurm"] = SlurmConfig(**slurm)
    for key, value in flags.items():
        if value is None:
            continue
        values[key] = {**values[key], **value} if key == "env" else value
    values["control"] = _finish_control(control, base)
    values["metrics"] = _finish_metrics(metrics)
    storage["remote"] = values.pop("remote") or storage["remote"]
    values["storage"] = _finish_storage(storage, base)
    for key in ("signing_key", "verify_key"):
        integrity[key] = values.pop(key) or integrity[key]
    values["integrity"] = _finish_integrity(integrity, base)
    if guard["monitor"] is not None and guard["patience"] < 1:
        raise ConfigError("[guard].patience: must be at least 1 with a monitor")
    values["guard"] = GuardConfig(**guard)
    return _finish(values, base, str(config_file) if config_file else "defaults")


def _read_tables(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}); TOML files are UTF-8") from None
    tables: dict[str, dict[str, Any]] = {}
    for name, table in document.items():
        if name not in TABLES:
            known = ", ".join(f"[{t}]" for t in TABLES)
            raise ConfigError(f"{path}: unknown table [{name}] (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} must be a table")
        options = {option.key: option for option in TABLES[name]}
        checked = tables.setdefault(name, {})
        for key, value in table.items():
            option = options.get(key)
            if option is None:
                raise ConfigError(f"{path}: [{name}].{key}: unknown key")
            try:
                checked[key] = option.kind.check(value)
            except ValueError as exc:
                raise ConfigError(f"{path}: [{name}].{key}: {exc}") from None
    return tables


def _finish_control(values: dict[str, Any], base: Path) -> ControlConfig:
    for key in ("bind", "publish"):
        endpoint = values[key]
        if endpoint is not None and not re.match(
            r"^tcp://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):\d+$", endpoint
        ):
            raise ConfigError(f"[control].{key}: expected tcp://HOST:PORT, got {endpoint!r}")
    keys = [values["curve_secret_key"], values["curve_authorized_keys"]]
    if any(keys) and not all(keys):
        raise ConfigError(
            "[control].curve_secret_key: CURVE needs both curve_secret_key and "
            "curve_authorized_keys"
        )
    secret = _absolute(keys[0], base) if keys[0] else None
    authorized = _absolute(keys[1], base) if keys[1] else None
    if secret is not None and not secret.is_file():
        raise ConfigError(
            f"[control].curve_secret_key: no such file {secret} (ckptd keygen makes one)"
        )
    if authorized is not None and not authorized.is_dir():
        raise ConfigError(f"[control].curve_authorized_keys: no such directory {authorized}")
    if secret is not None and authorized is not None:
        if problem := secret_key_problem(secret):
            raise ConfigError(f"[control].curve_secret_key: {problem}")
        if problem := authorized_keys_problem(authorized):
            raise ConfigError(f"[control].curve_authorized_keys: {problem}")
    for key in ("bind", "publish"):
        endpoint = values[key]
        if endpoint is None or secret is not None:
            continue
        if not _loopback(endpoint):
            raise ConfigError(
                f"[control].{key}: refusing {endpoint} beyond loopback without CURVE "
                "(set curve_secret_key and curve_authorized_keys)"
            )
        if not values["allow_unauthenticated"]:
            raise ConfigError(
                f"[control].{key}: {endpoint} without CURVE is open to every local user; set "
                "curve_secret_key and curve_authorized_keys, or allow_unauthenticated = true"
            )
    return ControlConfig(
        bind=values["bind"],
        publish=values["publish"],
        curve_secret_key=secret,
        curve_authorized_keys=authorized,
        max_message_bytes=values["max_message_bytes"],
        allow_unauthenticated=values["allow_unauthenticated"],
    )


def _finish_storage(values: dict[str, Any], base: Path) -> StorageConfig:
    remote = values["remote"]
    if remote is not None:
        try:
            remote = check_remote_url(remote, base)
        except ValueError as exc:
            raise ConfigError(f"[storage].remote: {exc}") from None
    return StorageConfig(remote, values["upload_timeout"], values["keep_remote"], values["options"])


def _finish_integrity(values: dict[str, Any], base: Path) -> IntegrityConfig:
    """Key files are read and checked now: a key that cannot sign or verify is exit 2."""
    signing = _absolute(values["signing_key"], base) if values["signing_key"] else None
    verifying = _absolute(values["verify_key"], base) if values["verify_key"] else None
    if signing is None and verifying is None:
        return IntegrityConfig()
    # cryptography and model-signing are the signing extra's: loaded only when configured
    from ckptd import integrity

    try:
        signer = integrity.Signer(signing) if signing else None
    except (integrity.KeyProblem, integrity.SigningUnavailable) as exc:
        raise ConfigError(f"[integrity].signing_key: {exc}") from None
    try:
        verifier = integrity.Verifier(verifying) if verifying else None
    except (integrity.KeyProblem, integrity.SigningUnavailable) as exc:
        raise ConfigError(f"[integrity].verify_key: {exc}") from None
    if signer is not None and verifier is not None and signer.public_pem != verifier.key.pem:
        raise ConfigError(
            f"[integrity].verify_key: {verifying} is not the public half of {signing}; "
            "checkpoints signed now would be refused at the next resume"
        )
    return IntegrityConfig(signing, verifying)


def _finish_metrics(values: dict[str, Any]) -> MetricsConfig:

    listen = values["listen"]
    if listen is not None:
        try:
            parse_listen(listen)
        except ValueError as exc:
            raise ConfigError(f"[metrics].listen: {exc}") from None
        try:
            import prometheus_client  # noqa: F401 - only its presence is checked
        except ImportError:
            raise ConfigError(
                "[metrics].listen: needs prometheus_client (pip install 'ckptd[metrics]')"
            ) from None
    return MetricsConfig(listen)


def _loopback(endpoint: str) -> bool:
    """True for ``tcp://127.x.x.x:port``, ``tcp://localhost:port`` and ``tcp://[::1]:port``."""
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _finish(values: dict[str, Any], base: Path, source: str) -> JobConfig:
    command = values["command"]
    if not command:
        raise ConfigError("command: nothing to run (give it after --, or as [job].command)")
    name = values["name"] if values["name"] is not None else default_name(command)
    if (problem := name_problem(name)) is not None:
        raise ConfigError(f"name: {problem}")
    if values["keep_best"] and not values["best_metric"] and values["guard"].monitor:
        # keep_best keeps the best by what early stopping watches, unless told otherwise
        values["best_metric"], values["best_mode"] = values["guard"].monitor, values["guard"].mode
    if values["keep_best"] and not values["best_metric"]:
        raise ConfigError("keep_best: needs best_metric to rank checkpoints")
    if values["restart_delay_max"] < values["restart_delay"]:
        raise ConfigError("restart_delay_max: must not be below restart_delay")
    if values["every_max"] < values["every_min"]:
        raise ConfigError("every_max: must not be below every_min")
    if values["memory_dir"] is not None and values["memory_every"] is None:
        raise ConfigError("memory_dir: needs memory_every (the memory tier is off without it)")
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    run_dir = values["run_dir"] or state_dir or f".ckptd/{name}"
    values.update(
        name=name,
        command=list(command),
        cwd=_absolute(values["cwd"] or ".", base),
        run_dir=_absolute(run_dir, base),
        checkpoint_dir=_absolute(values["checkpoint_dir"] or f"checkpoints/{name}", base),
        memory_dir=_absolute(values["memory_dir"], base) if values["memory_dir"] else None,
    )
    return JobConfig(**values, source=source)


def _absolute(path: str, base: Path) -> Path:
    return Path(os.path.normpath(base / Path(path).expanduser()))
